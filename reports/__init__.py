"""Pathology report records, loading, normalisation that adds nothing, PHI screening, conditioning text.

This package never imports torch, and never rewrites or embellishes a report.
"""
