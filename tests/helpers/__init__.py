"""Test helpers: real servers on free ports, service processes, models for tests."""
