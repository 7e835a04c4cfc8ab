"""Backbones: each exposes ``out_channels`` and ``strides`` dicts and returns a feature dict."""
