"""What edge and cloud agree on: wire models, topics, rules and their evaluator, grow profiles.

No I/O lives here.
"""
