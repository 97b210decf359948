"""The BentoML service that answers the storefront, and the ``nextbest`` command line.

``serving`` is the top of the dependency chain (features <- training <- serving), which is why
the command line that assembles every sub-command lives here.
"""
