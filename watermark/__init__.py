"""Watermark embed / detect / localize behind one contract (`watermark.types`)."""
