"""Variance-propagation theory: the recursions, measurement on real networks at init, the check of
one against the other, its figures."""
