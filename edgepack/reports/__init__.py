"""Everything made from results.json alone: the Markdown and HTML reports, plots, the app manifest, run comparison,
the gate. Nothing here imports torch or TensorFlow, or recomputes a figure."""
