"""Placement: which site and partition a queued job goes to, and when it is expected to start.

model.py     what the daemon knows of each site (built from agent reports)
runtime.py   how long jobs are expected to run (history, capped by the limit)
profile.py   a partition's free capacity over time and the earliest slot for a job shape
estimate.py  estimated start with a calibrated median and 90% bound
policy.py    filter sites (precision, shape, state, mapping) and rank them; one cycle of placement
"""
