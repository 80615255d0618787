"""Exporters: cbdm runs -> folders other libraries load (diffusers)."""

from .diffusers import ExportResult, export_diffusers

__all__ = ["ExportResult", "export_diffusers"]
