"""Where alerts go (topic, Redis stream, log, webhook) and how on-call reads them back."""
