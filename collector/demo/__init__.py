"""``collector demo``: a simulated pilot line and a collector for it
(:mod:`collector.demo.line`)."""
