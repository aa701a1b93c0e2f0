"""Delivery of the registry's state to where it is stored (see the README's "Delivery")."""
