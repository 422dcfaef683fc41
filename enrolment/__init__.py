"""Organisations, declared users, SMS verification and device registration."""
