"""Watermark backends that share one embed/detect contract (see `watermark.types`)."""
