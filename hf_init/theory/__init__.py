"""Variance-propagation theory: the recursions, measurement at init, the check, its figures."""
