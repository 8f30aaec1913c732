"""The demo app: a product catalogue whose changes broadcast live."""
