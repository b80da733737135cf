"""distinception: GoogLeNet trained with asynchronous SGD on a Ray parameter server."""

__version__ = "0.1.0"
