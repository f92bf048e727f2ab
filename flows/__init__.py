"""flows: Bytewax dataflows turning clicks and purchases into session features and examples."""
