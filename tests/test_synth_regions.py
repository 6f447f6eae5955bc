"""A look-alike's finding shows where its box or mask is: the localization sources draw a finding
with a place inside its boxes or masks only, so a detector or a segmenter can learn it, and the
label files a seed writes do not depend on it.

Everything is read back from the written files: records (boxes, mask specs, labels) through the
source's own `scan`, as `shards build` reads them, masks through `shards.masks.rasterize`, pixels
through `shards.images.decode_original`. Two measures of texture: a generic one, |image - its
Gaussian blur| (sigma 1/40 of the side), and the finding's own, the amplitude of the image's
spectrum near the finding's frequency (a Gabor-like band of 0.2 x its cycles), which tells one
finding from another (some sources show another finding over the whole chest of every image)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from shards import masks, synth
from shards.images import decode_original
from shards.sources import get_source
from shards.synth import FINDINGS, boxes_region, mask_region, radiograph

# Source: (images, scale). Sides of 128-256 px: boxes and masks many pixels across, gratings of
# 16 cycles 8-16 px a period.
LOOKS = {"node21": (16, 0.25), "tbx11k": (20, 0.5), "chestx_det": (12, 0.25), "candid_ptx": (12, 0.25),
         "siim_acr": (16, 0.25), "rsna_pneumonia": (24, 0.25), "vindr_cxr": (120, 0.06), "chestxray14": (160, 0.125)}
# A box's label -> the class whose finding it places (TBX11K boxes active and latent TB alike).
BOX_CLASS = {"tbx11k": lambda label: "TB",
             "chestxray14": lambda label: {"Infiltrate": "Infiltration"}.get(label, label)}
IMAGE_SUFFIXES = (".mha", ".dcm", ".dicom", ".png", ".jpg")
SEED = 5


class Look:
    """One source's look-alike as read back: per record its image, shown classes and regions."""

    def __init__(self, name: str, root: Path):
        source = get_source(name)
        scan = source.scan(root)
        self.root = root
        self.heads = list(getattr(source, "head_labels", None) or scan.classes)  # the classes synth draws, in order
        self.images, self.paths, self.shown, self.regions, self._textures = [], [], [], [], {}
        for record in scan.records:
            if record.labels is None and not _unanimous(record, self.heads):
                continue  # which of the readers' labels the image shows is not sure
            image = np.asarray(decode_original((root / record.image).read_bytes(), name=record.image), dtype=np.float64)
            height, width = image.shape
            shown = {c for c in self.heads if _votes(record, c)}
            # A finding's mask where it has one (ChestX-Det's boxes are its polygons' extents), else its boxes.
            regions = {label: masks.rasterize(spec, (width, height), root)
                       for label, spec in (record.masks or {}).items() if spec}
            for box in record.boxes or []:
                label = BOX_CLASS.get(name, lambda x: x)(box["label"])
                if label in shown and label not in (record.masks or {}):  # a box of a finding not shown: nothing
                    regions[label] = regions.get(label, False) | _box_mask(box["xyxy"], image.shape)
            self.images.append(image)
            self.paths.append(root / record.image)
            self.shown.append(shown)
            self.regions.append(regions)

    def texture(self, i: int, index: int) -> np.ndarray:
        """`own_texture` of image i for finding `index`, computed once."""
        key = (i, index)
        if key not in self._textures:
            self._textures[key] = own_texture(self.images[i], index)
        return self._textures[key]

    def placed(self):
        """(image index, class, bool region) of every shown finding with a box or mask."""
        return [(i, c, r) for i, regions in enumerate(self.regions) for c, r in regions.items()]

    def clean(self) -> list[int]:
        """Images whose every shown finding has a place (nothing drawn over the whole chest)."""
        return [i for i, (shown, regions) in enumerate(zip(self.shown, self.regions))
                if shown and shown == set(regions)]


def _votes(record, label: str) -> bool:
    """The label as the image shows it: the file's, or the readers' (`Look` keeps their images only
    where they agree: they draw their votes from the truth with a few errors)."""
    if record.labels is not None:
        return record.labels.get(label) == 1
    return any(v[label] for v in record.readers.values())


def _unanimous(record, labels: list[str]) -> bool:
    return all(len({v[label] for v in record.readers.values()}) == 1 for label in labels)


def _box_mask(xyxy, shape) -> np.ndarray:
    """The pixels whose centres lie in the box."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    x0, y0, x1, y1 = xyxy
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def high_pass(image: np.ndarray) -> np.ndarray:
    return np.abs(image - ndimage.gaussian_filter(image, min(image.shape) / 40, mode="reflect"))


def own_texture(image: np.ndarray, index: int) -> np.ndarray:
    """Local amplitude of finding `index`'s frequencies (FINDINGS: cycles per side of the image)."""
    kind, angle, cycles = FINDINGS[index]
    height, width = image.shape
    spectrum = np.fft.fft2(image - image.mean())
    fy, fx = np.fft.fftfreq(height)[:, None] * height, np.fft.fftfreq(width)[None, :] * width  # cycles per side
    theta = np.deg2rad(angle)
    if kind == "checker":
        peaks = [(cycles, cycles), (cycles, -cycles)]
    else:
        peaks = [(cycles * np.cos(theta), cycles * np.sin(theta))]
    band = 0.2 * cycles
    return sum(np.abs(np.fft.ifft2(spectrum * np.exp(-((fx - u) ** 2 + (fy - v) ** 2) / (2 * band**2))))
               for u, v in peaks)


@pytest.fixture(scope="module")
def looks(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("regions"), {}

    def get(name: str) -> Look:
        if name not in cache:
            num_images, scale = LOOKS[name]
            root = out / name
            get_source(name).synthesize(root, num_images=num_images, seed=SEED, scale=scale)
            cache[name] = Look(name, root)
        return cache[name]

    return get


@pytest.mark.parametrize("source", sorted(LOOKS))
def test_a_placed_finding_shows_inside_its_boxes_or_masks_and_not_around_them(looks, source):
    """Images whose findings all have a place: the texture inside the boxes/masks is well above
    that in a band just around them (from 1/40 to 1/10 of the side away: a box drawn off its label
    would light it) and that in the rest of the image."""
    look = looks(source)
    clean = look.clean()
    assert len(clean) >= 3, (source, len(clean))
    sums, counts = np.zeros(3), np.zeros(3)  # inside, the band around, the rest
    for i in clean:
        union = np.logical_or.reduce(list(look.regions[i].values()))
        side = min(union.shape)
        away = ndimage.distance_transform_edt(~union)  # pixels from the nearest placed pixel
        energy = high_pass(look.images[i])
        for k, where in enumerate((union, (away > side / 40) & (away <= side / 10), away > side / 10)):
            sums[k] += energy[where].sum()
            counts[k] += where.sum()
    inside, band, rest = sums / counts
    assert inside >= 2 * band and inside >= 2 * rest, (source, round(inside, 2), round(band, 2), round(rest, 2))


@pytest.mark.parametrize("source", sorted(LOOKS))
def test_a_placed_finding_is_its_own_texture_which_images_without_it_lack_there(looks, source):
    """The finding's own frequencies inside each box/mask, against the same pixels of every image
    that does not show that finding (which may show another one over the whole chest)."""
    look = looks(source)
    placed = look.placed()
    assert placed, source
    mine, theirs = [], []
    for i, label, region in placed:
        index = look.heads.index(label)
        mine.append(look.texture(i, index)[region].mean())
        others = [j for j, shown in enumerate(look.shown)
                  if label not in shown and look.images[j].shape == region.shape]
        theirs.append(np.mean([look.texture(j, index)[region].mean() for j in others]))
    assert np.mean(mine) >= 2 * np.mean(theirs), (source, np.round(mine, 1), np.round(theirs, 1))


@pytest.mark.parametrize("source", ["tbx11k", "chestxray14"])
def test_a_finding_without_a_box_still_shows_over_the_chest(looks, source):
    """A shown finding with no box (TBX11K's TB image without boxes and its extra images,
    ChestX-ray14's findings BBox_List leaves out) keeps its texture over the chest."""
    look = looks(source)
    unplaced = [(i, c) for i, shown in enumerate(look.shown) for c in shown - set(look.regions[i])]
    assert unplaced, source
    mine, theirs = [], []
    for i, label in unplaced:
        index = look.heads.index(label)
        height, width = look.images[i].shape
        chest = (slice(height // 4, 3 * height // 4), slice(width // 4, 3 * width // 4))
        mine.append(look.texture(i, index)[chest].mean())
        theirs.append(np.mean([look.texture(j, index)[chest].mean()
                               for j, shown in enumerate(look.shown) if label not in shown]))
    assert np.mean(mine) >= 2 * np.mean(theirs), (source, np.round(mine, 1), np.round(theirs, 1))


def stored_values(path: Path) -> np.ndarray:
    """The file's pixel values as stored (no windowing, which a finding's few bright pixels would
    move over the whole image)."""
    if path.suffix == ".mha":
        import SimpleITK as sitk

        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0].astype(np.int64)
    if path.suffix in (".dcm", ".dicom"):
        import pydicom

        return pydicom.dcmread(path).pixel_array.astype(np.int64)
    return np.asarray(Image.open(path).convert("L"), dtype=np.int64)


@pytest.mark.parametrize("source", sorted(LOOKS))
def test_the_drawn_finding_covers_its_boxes_or_masks_and_nothing_else(looks, source, tmp_path, monkeypatch):
    """The look-alike again with `radiograph` drawing no findings: where an image whose findings
    all have a place differs from it is where the finding was drawn. That is within 2 px of its
    boxes/masks (the soft edge, and a box's rounding to whole pixels), and nearly all of them (a
    grating's zero crossings, and its crests where the spine already clips, may not differ)."""
    look = looks(source)
    original = synth.radiograph
    monkeypatch.setattr(synth, "radiograph", lambda rng, width, height, **_: original(rng, width, height))
    num_images, scale = LOOKS[source]
    get_source(source).synthesize(tmp_path, num_images=num_images, seed=SEED, scale=scale)
    checked = 0
    for i in look.clean():
        union = np.logical_or.reduce(list(look.regions[i].values()))
        drawn = stored_values(look.paths[i]) != stored_values(tmp_path / look.paths[i].relative_to(look.root))
        near = ndimage.binary_dilation(union, np.ones((5, 5), bool))
        assert not (drawn & ~near).any(), (source, look.paths[i].name, int((drawn & ~near).sum()))
        assert drawn[union].mean() >= 0.7, (source, look.paths[i].name, drawn[union].mean())
        checked += 1
    assert checked >= 3, source


def _files(root: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Every file written, by path relative to root, split into (label files, images)."""
    found = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    labels = {k: v for k, v in found.items() if not k.endswith(IMAGE_SUFFIXES)}
    return labels, {k: v for k, v in found.items() if k not in labels}


@pytest.mark.parametrize("source", sorted(LOOKS))
def test_a_seeds_label_files_do_not_depend_on_where_findings_are_drawn(source, tmp_path, monkeypatch):
    """Twice with one seed: the same files, byte for byte. Then with `radiograph` drawing no
    findings at all (nor their regions): the same label files, and only the images differ."""
    def write(folder: str) -> tuple[dict, dict]:
        get_source(source).synthesize(tmp_path / folder, num_images=12, seed=0, scale=0.0625)
        return _files(tmp_path / folder)

    labels, images = write("first")
    assert labels and images
    assert write("again") == (labels, images)
    original = synth.radiograph
    monkeypatch.setattr(synth, "radiograph", lambda rng, width, height, **_: original(rng, width, height))
    bare_labels, bare_images = write("bare")
    assert {k: hashlib.sha256(v).hexdigest() for k, v in bare_labels.items()} == \
        {k: hashlib.sha256(v).hexdigest() for k, v in labels.items()}
    assert bare_images.keys() == images.keys() and bare_images != images  # the findings were drawn


def test_boxes_region_covers_its_pixels_with_a_soft_edge():
    weight = boxes_region([[4, 6, 10, 9], [20.4, 2.6, 21.2, 3.1]], width=32, height=16)  # a box; one under a pixel
    assert weight.shape == (16, 32) and weight.dtype == np.float32
    assert (weight[7, 5:9] == 1).all() and weight[7, 4] == 0.75 and weight[7, 3] == 0.25 and weight[7, 2] == 0
    assert weight[6, 5] == 0.75 and weight[5, 5] == 0.25 and weight[4, 5] == 0
    assert weight[7, 9] == 0.75 and weight[7, 10] == 0.25 and weight[9, 5] == 0.25  # x1, y1 are edges: 10 and 9 out
    assert weight[8, 9] == 0.75**2  # a corner, soft both ways
    assert weight[3, 20] == 0.25 and (weight[3, 19:22] > 0).all()  # the tiny box keeps one pixel: 1/4 after the blur
    assert weight[12:, :].max() == 0 and weight.max() == 1


def test_mask_region_keeps_a_mask_at_the_image_border_whole():
    mask = np.zeros((8, 8), bool)
    mask[:3, :3] = True
    weight = mask_region(mask)
    assert weight[0, 0] == 1 and weight[1, 1] == 1 and weight[2, 2] == 0.75**2 and weight[3, 0] == 0.25
    assert weight[mask].min() > 0.5 and weight[~mask].max() <= 0.25


def test_radiograph_draws_a_placed_finding_only_in_its_region():
    region = boxes_region([[20, 10, 40, 30]], width=64, height=48)
    bare = radiograph(np.random.default_rng(1), 64, 48)
    placed = radiograph(np.random.default_rng(1), 64, 48, findings={3: 1.0}, regions={3: region})
    over_chest = radiograph(np.random.default_rng(1), 64, 48, findings={3: 1.0})
    change = np.abs(placed - bare)
    assert change[region == 0].max() == 0  # nothing outside, not a bit
    assert change[region == 1].mean() > 0.1  # a finding at full amplitude (0.25 x |sin|: about 0.16)
    assert np.abs(over_chest - bare)[region == 0].mean() > 0.05  # without a region: over the whole chest
    with pytest.raises(ValueError, match="not among the findings"):
        radiograph(np.random.default_rng(1), 64, 48, findings={3: 1.0}, regions={4: region})
