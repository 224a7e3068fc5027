"""Recommendation providers: the built-in advisor now; AWS Bedrock with the AI issue."""
