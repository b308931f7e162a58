"""Delivery: what flows hand over (messages), and the transports that deliver it.

``remarketing.delivery.transports`` gathers the public pieces: ``SendGridTransport`` (the
SendGrid v3 API), ``OutboxTransport`` (the embedded default: .eml files and an HTML index),
``SendGridApi`` (suppressions and stats, read side) and ``RetryPolicy``. Submodules import
lazily so that reading the message model costs nothing.
"""
