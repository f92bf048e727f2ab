"""streamrec: streaming real-time learning for e-commerce recommendations.

This small package holds what every stage shares: settings, the event contract, topic
names, the Redis key layout, logging, local services and the command line.
"""

__version__ = "0.1.0"
