"""What the book's chapters call: claims and verdicts, tables, figures, rendering, widgets, the chapters' parameter checks."""
