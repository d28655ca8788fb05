"""`fedfr pretrain --data` accepts every training format: the same faces give the same set."""

import numpy as np
import pytest

from fedfr.cli import main
from fedfr.data.images import write_image_atomic
from fedfr.data.recordio import write_recordio
from fedfr.data.sources import load_training_set
from fedfr.data.synthetic import SyntheticFaces
from fedfr.errors import DataFormatError


@pytest.fixture(scope="module")
def faces():
    ids = np.repeat(np.arange(5) * 7 + 3, 4)  # 5 identities (global ids 3, 10, ...), 4 images
    images = SyntheticFaces(seed=1).render(ids, np.tile(np.arange(4), 5))
    return images, np.repeat(np.arange(5), 4)


def test_image_folder_and_recordio_load_the_same_faces(faces, tmp_path):
    images, labels = faces
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / "folder" / f"person_{y}").mkdir(parents=True, exist_ok=True)
        write_image_atomic(tmp_path / "folder" / f"person_{y}" / f"{i}.png", img)
    # RecordIO with class ids that are not contiguous: the loader renumbers them 0..C-1.
    write_recordio(tmp_path / "train.rec", None,
                   [(img, int(y) * 10) for img, y in zip(images, labels, strict=True)],
                   image_format="png")

    from_folder = load_training_set(tmp_path / "folder")
    from_rec = load_training_set(tmp_path / "train.rec")
    for ts in (from_folder, from_rec):
        assert ts.images.shape == (20, 112, 112, 3) and ts.images.dtype == np.uint8
        assert ts.num_classes == 5
        assert sorted(np.bincount(ts.labels).tolist()) == [4] * 5
    np.testing.assert_array_equal(from_rec.images, images)  # PNG is lossless
    np.testing.assert_array_equal(from_rec.labels, labels)
    assert from_folder.description.startswith("folder:")
    assert from_rec.description == "recordio:train.rec"

    ckpt = tmp_path / "m.safetensors"
    assert main(["pretrain", "--data", str(tmp_path / "train.rec"), "--arch", "mbf_tiny",
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(ckpt),
                 "--json"]) == 0
    assert ckpt.exists()


def test_unknown_formats_are_named(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match=r"notes\.txt"):
        load_training_set(tmp_path / "notes.txt")
    with pytest.raises(DataFormatError, match="missing"):
        load_training_set(tmp_path / "missing")
