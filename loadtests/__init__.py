"""Load tests for queue chat: a Locust file (``loadtests/locustfile.py``) and what it is made of.

Importing this package imports neither Locust (nor gevent) nor Trio: the
parts that need Locust are loaded by the Locust file. ``queuechat load``
runs it; ``python -m loadtests.sink`` is a minimal server for measuring the
generator itself.
"""
