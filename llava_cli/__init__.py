"""llava-cli: ask LLaVA-family vision-language models about videos and images."""

__version__ = "0.1.0"
