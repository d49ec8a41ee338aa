"""Tests: orm."""
