"""memory-bot's Discord bot and console chat, built on the public ``memory`` API only."""
