"""device_sdk: placeholder package (built by a later issue)."""
