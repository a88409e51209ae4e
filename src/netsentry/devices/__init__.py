"""Devices whose keys netsentry rotates: packets, profiles, detection, streams."""
