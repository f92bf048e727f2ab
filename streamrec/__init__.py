"""streamrec: streaming real-time learning for e-commerce recommendations.

This small package holds what every stage shares, at the bottom of the imports: settings,
the contracts (events, topics, Redis keys, training examples, session features, alerts),
Kafka clients, logging and local services. The command line is ``cli/``, on top.
"""

__version__ = "0.1.0"
