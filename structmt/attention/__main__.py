"""``python -m structmt.attention``: the plugin's options as a markdown table (docs/plugin.md holds its output)."""

from .options import markdown_table

print(markdown_table(), end="")
