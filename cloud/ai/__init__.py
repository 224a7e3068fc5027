"""AI for the grow rooms: recommendation providers (the built-in advisor by default, AWS Bedrock
when configured) behind one interface, the room context they read, one-click actions, and the
yield model."""
