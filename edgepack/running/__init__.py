"""Running a recipe: the pipeline, its cache and progress, loading the model and the data, the measurements taken on
every artifact (verification, accuracy, robustness), and the context stages get."""
