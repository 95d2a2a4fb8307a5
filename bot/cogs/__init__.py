"""discord.py extensions: the chat pipeline and the memory commands."""
