"""A data function for the 'callable' source, as a user would write one in their project."""

from edgepack.calibration.sources import digits_split


def digits_train():
    images, labels = digits_split("train")
    return {"image": images[:100], "labels": labels[:100]}


def wrong_key():
    return {"pixels": digits_split("train")[0][:10]}
