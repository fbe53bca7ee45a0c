"""Particle images: lazy access to MRC stacks, bounded-memory batching, and image operations in torch.

Conventions (shared with core.ctf and core.projector):
  * images are (..., box, box) tensors; the image centre is pixel (box//2, box//2) for odd and even
    boxes, as in RELION;
  * Fourier arrays use torch.fft's unshifted layout (DC at [0, 0]; rfft2 keeps box//2+1 columns);
  * frequencies are in cycles/pixel, or 1/Angstrom where a pixel size is given.
The operations are batched, run on the images' device and dtype, and are differentiable.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import mrc
from .errors import InputError, JobAborted

__all__ = ["ImageSource", "radius_grid", "radial_frequency_grid", "soft_circular_mask", "apply_soft_mask",
           "normalize_in_mask", "normalize_background", "default_background_radius", "fourier_resize", "fourier_crop",
           "fourier_pad", "lowpass", "phase_flip"]

_NATIVE_F32 = np.dtype(np.float32)


class ImageSource:
    """One row per particle: (stack file, 0-based index in it), read lazily in bounded memory.

    ``stacks`` are paths, relative ones resolved against ``root`` (the RELION project directory);
    ``stack_ids[i]`` says which stack row i is in and ``indices[i]`` where. Every 3D file is read
    as a stack of images (the rows say so), whatever its extension or space group.

    Reading uses ``os.preadv`` straight into the output array, one call per run of consecutive
    images, with an LRU of open file descriptors. It is as fast as slicing memory maps
    (bench/bench_io.py: 1.01x in order, 1.05x shuffled) but, unlike a map, does not add every
    page it has touched to the process RSS (a pass over a 1.3 GB stack: +3 MB vs +1.3 GB), which
    schedulers that police RSS would count against the job. ``core.mrc.open_stack`` gives a map
    for interactive use.
    """

    def __init__(self, stacks: Sequence[str | os.PathLike], stack_ids, indices, root: str | os.PathLike | None = None,
                 *, max_open: int = 64):
        self.root = None if root is None else Path(root)
        self.stacks = [Path(s) if self.root is None or Path(s).is_absolute() else self.root / s for s in stacks]
        self.stack_ids = np.asarray(stack_ids, dtype=np.int64).reshape(-1)
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.stack_ids) != len(self.indices):
            raise ValueError(f"{len(self.stack_ids)} stack ids but {len(self.indices)} indices")
        self.max_open = max(1, int(max_open))
        self._info: dict[int, mrc.StackInfo] | None = None
        self._box: int | None = None
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()  # the prefetch thread and the caller share the descriptors

    def __len__(self) -> int:
        return len(self.stack_ids)

    def __repr__(self) -> str:
        return f"ImageSource({len(self)} images in {len(self.stacks)} stacks, box={self._box})"

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> "ImageSource":
        """Read each used stack's header once; InputError naming the file for any inconsistency."""
        if len(self) and (self.stack_ids.min() < 0 or self.stack_ids.max() >= len(self.stacks)):
            raise ValueError(f"stack ids must lie in [0, {len(self.stacks)})")
        if len(self) and self.indices.min() < 0:
            bad = int(np.argmin(self.indices))
            raise InputError(f"negative image index {self.indices[bad]} (row {bad})", self.stacks[self.stack_ids[bad]])
        last = np.full(len(self.stacks), -1, dtype=np.int64)
        np.maximum.at(last, self.stack_ids, self.indices)
        info: dict[int, mrc.StackInfo] = {}
        first: tuple[Path, int] | None = None
        for s in np.flatnonzero(last >= 0).tolist():
            path = self.stacks[s]
            si = mrc.stack_info(path)
            if si.ny != si.nx:
                raise InputError(f"images are {si.ny} x {si.nx} pixels; cryolens needs square images", path)
            if last[s] >= si.n:
                raise InputError(f"rows refer to image {last[s] + 1} (1-based, as in {last[s] + 1}@stack) "
                                 f"but the stack has {si.n} images", path)
            if first is None:
                first = (path, si.nx)
            elif si.nx != first[1]:
                raise InputError(f"box {si.nx} px differs from {first[1]} px in {first[0]}", path)
            info[s] = si
        self._info, self._box = info, None if first is None else first[1]
        return self

    @property
    def box(self) -> int:
        if self._info is None:
            self.validate()
        if self._box is None:
            raise InputError("no images to read (empty particle set)")
        return self._box

    # -- reading -------------------------------------------------------------------------
    def read(self, rows) -> np.ndarray:
        """Images of the given rows (in that order) as float32 (n, box, box)."""
        rows = self._rows(rows)
        out = np.empty((len(rows), self.box, self.box), dtype=np.float32)
        self._read_into(rows, out)
        return out

    def iter_batches(self, batch_size: int = 256, rows=None, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, progress: Callable[[int, int], None] | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     prefetch: bool = True) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(rows, images)`` batches, images a (n, box, box) tensor on ``device``.

        ``rows`` (default: all, in order) fixes which rows and in what order (shuffle them
        yourself, with your seed). Memory is bounded whatever the number of rows: the iterator
        holds the batch it yielded and, with ``prefetch``, the next one, read by a background
        thread while the caller works (1.6x faster with a compute-bound CPU consumer, no gain
        when the consumer does nothing; bench/bench_io.py).
        ``should_stop()`` is polled before each batch; True raises JobAborted. ``progress(done,
        total)`` is called after the caller has finished with each batch.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        rows = np.arange(len(self), dtype=np.int64) if rows is None else self._rows(rows)
        box, total = self.box, len(rows)
        device = torch.device(device)
        pinned = device.type == "cuda"  # page-locked host buffers make the copy to the GPU asynchronous

        def load(start: int) -> torch.Tensor:
            chunk = rows[start:start + batch_size]
            if pinned:  # torch caches pinned blocks
                t = torch.empty((len(chunk), box, box), dtype=torch.float32, pin_memory=True)
                self._read_into(chunk, t.numpy())
                return t
            # numpy, not torch.empty: glibc reuses freed 16 MB blocks, torch's CPU allocator maps
            # fresh zeroed pages for each batch (6x slower for 128 px batches of 256)
            a = np.empty((len(chunk), box, box), dtype=np.float32)
            self._read_into(chunk, a)
            return torch.from_numpy(a)

        starts = range(0, total, batch_size)
        pool = ThreadPoolExecutor(1, thread_name_prefix="cryolens-prefetch") if prefetch and len(starts) > 1 else None
        future = pool.submit(load, 0) if pool else None
        try:
            for k, start in enumerate(starts):
                if should_stop is not None and should_stop():
                    raise JobAborted(f"stopped on request after {start} of {total} images")
                batch = future.result() if pool else load(start)
                if pool and k + 1 < len(starts):
                    future = pool.submit(load, starts[k + 1])
                yield rows[start:start + batch_size], batch.to(device=device, dtype=dtype, non_blocking=pinned)
                if progress is not None:
                    progress(min(start + batch_size, total), total)
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            while self._fds:
                os.close(self._fds.popitem()[1])

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):  # picklable for DataLoader workers: descriptors and lock are per process
        state = self.__dict__.copy()
        state["_fds"], state["_lock"] = OrderedDict(), None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _rows(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)})")
        return rows

    def _read_into(self, rows: np.ndarray, out: np.ndarray) -> None:
        if self._info is None:
            self.validate()
        if len(rows) == 0:
            return
        sid, idx = self.stack_ids[rows], self.indices[rows]
        # runs of consecutive images of one stack, wanted in consecutive output slots: one read each
        cut = np.flatnonzero((sid[1:] != sid[:-1]) | (idx[1:] != idx[:-1] + 1)) + 1
        starts = np.concatenate(([0], cut))
        stops = np.concatenate((cut, [len(rows)])).tolist()
        current = -1
        with self._lock:
            for a, b, s, i in zip(starts.tolist(), stops, sid[starts].tolist(), idx[starts].tolist()):
                if s != current:  # descriptor and header once per change of stack, not per image
                    current, fd, info = s, self._fd(s), self._info[s]
                    direct = info.dtype == _NATIVE_F32
                dst = out[a:b]
                buf = dst if direct else np.empty(dst.shape, dtype=info.dtype)
                view = memoryview(buf).cast("B")
                pos, done = info.offset + i * info.image_bytes, 0
                while done < len(view):  # preadv may return short counts
                    got = os.preadv(fd, [view[done:]], pos + done)
                    if got == 0:
                        raise InputError(f"file ends inside image {i + 1 + done // info.image_bytes}: was it "
                                         "truncated or replaced while reading?", self.stacks[s])
                    done += got
                if not direct:
                    dst[...] = buf  # int8/int16/uint16/float16/big-endian -> float32

    def _fd(self, s: int) -> int:
        fd = self._fds.pop(s, None)
        if fd is None:
            try:
                fd = os.open(self.stacks[s], os.O_RDONLY)
            except OSError as err:
                raise InputError(f"cannot open image stack: {err.strerror}", self.stacks[s]) from None
            if len(self._fds) >= self.max_open:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[s] = fd  # most recently used last
        return fd


# -- grids and masks -------------------------------------------------------------------------
def radius_grid(box: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(box, box) distance in pixels from the image centre (box//2, box//2)."""
    c = torch.arange(box, device=device, dtype=dtype) - box // 2
    return torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)


def radial_frequency_grid(box: int, rfft: bool = True, pixel_size: float | None = None, device=None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """|k| on the torch.fft grid, (box, box//2+1) if ``rfft`` else (box, box), unshifted.

    In cycles/pixel (Nyquist 0.5; multiply by box for the Fourier-shell index), or in 1/Angstrom
    when ``pixel_size`` is given.
    """
    d = 1.0 if pixel_size is None else float(pixel_size)
    ky = torch.fft.fftfreq(box, d=d, device=device, dtype=dtype)[:, None]
    kx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(box, d=d, device=device, dtype=dtype)[None, :]
    return torch.sqrt(ky * ky + kx * kx)


def _raised_cosine(x: torch.Tensor, start, width) -> torch.Tensor:
    """1 for x <= start, 0 for x >= start + width, a cosine fall-off between (a step if width <= 0);
    ``start`` and ``width`` numbers or tensors that broadcast against ``x`` (widths then > 0)."""
    if not torch.is_tensor(width) and width <= 0:
        return (x <= start).to(x.dtype)
    t = ((x - start) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def soft_circular_mask(box: int, radius_px: float, width_px: float = 5.0, device=None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(box, box) mask: 1 within ``radius_px`` of the centre, a cosine fall-off to 0 over ``width_px``
    beyond it (RELION's ``softMaskOutsideMap`` edge)."""
    return _raised_cosine(radius_grid(box, device, dtype), float(radius_px), float(width_px))


def apply_soft_mask(images: torch.Tensor, radius_px: float, width_px: float = 5.0,
                    fill: str = "zero") -> torch.Tensor:
    """Soft circular mask; outside it goes to 0 (``fill="zero"``) or, like RELION's
    softMaskOutsideMap, to each image's mean of the outside weighted by (1 - mask) (``"background"``)."""
    m = soft_circular_mask(images.shape[-1], radius_px, width_px, images.device, images.dtype)
    if fill == "zero":
        return images * m
    if fill != "background":
        raise ValueError(f"fill must be 'zero' or 'background', not {fill!r}")
    w = 1.0 - m
    bg = (images * w).sum(dim=(-2, -1), keepdim=True) / w.sum().clamp_min(1e-12)
    return images * m + bg * w


def normalize_in_mask(images: torch.Tensor, mask: torch.Tensor | None = None, *, eps: float = 1e-12,
                      ddof: int = 0, scale: str = "sd", zero_outside: bool = True) -> torch.Tensor:
    """The one masked standardisation: zero mean inside ``mask`` > 0.5 ((b, b) or one per image;
    None: the whole image), unit ``scale``, then multiplied by ``mask`` (``zero_outside``).

    Defaults: how class averages and library references are put on one footing (identify, the
    synthetic class averages). The other callers, each kept to the byte:
    ``scale="norm"``: unit L2 norm of the masked image instead of unit sd, so the dot product of
    two is their normalised cross-correlation (``core.correlate``); ``zero_outside=False``: the
    mask sets the statistics only (the ranker's image features); ``mask=None, ddof=1``: the
    whole image with the sample sd (the encoders' input, which their weights were trained on).
    ``ddof=1`` takes torch's own mean and sd, ``ddof=0`` the population sd from masked sums;
    ``eps`` floors the scale (the ranker, the encoders and the synthetic classes use 1e-6).
    """
    if scale not in ("sd", "norm"):
        raise ValueError(f"scale must be 'sd' or 'norm', not {scale!r}")
    if mask is None:
        if scale != "sd":
            raise ValueError("scale='norm' needs a mask")
        dims = (-2, -1)
        return (images - images.mean(dim=dims, keepdim=True)) / \
            images.std(dim=dims, keepdim=True, correction=ddof).clamp_min(eps)
    if ddof:
        if mask.dim() != 2 or scale != "sd":
            raise ValueError("ddof needs one (b, b) mask and scale='sd'")
        v = images[..., mask > 0.5]
        mean, sd = v.mean(-1), v.std(-1, correction=ddof).clamp_min(eps)
        x = (images - mean[..., None, None]) / sd[..., None, None]
        return x * mask if zero_outside else x
    inside = (mask > 0.5).to(images.dtype).expand_as(images)
    n = inside.sum((-2, -1)).clamp_min(1.0)
    x = images - ((images * inside).sum((-2, -1)) / n)[..., None, None]
    if scale == "norm":
        x = x * mask
        return x / x.flatten(-2).norm(dim=-1)[..., None, None].clamp_min(eps)
    sd = torch.sqrt(((x * inside) ** 2).sum((-2, -1)) / n).clamp_min(eps)
    return x / sd[..., None, None] * mask if zero_outside else x / sd[..., None, None]


# -- normalisation ---------------------------------------------------------------------------
def default_background_radius(box: int) -> int:
    """RELION's default: a background circle of 75% of the box diameter, radius ROUND(0.375 box)."""
    return int(math.floor(0.375 * box + 0.5))


def normalize_background(images: torch.Tensor, radius_px: float | None = None, *, ramp: bool = False,
                         eps: float = 1e-10) -> torch.Tensor:
    """RELION's particle normalisation: (x - mean) / std of the BACKGROUND pixels.

    Background pixels are those with i^2 + j^2 > radius^2 (i, j from the centre box//2), the
    std is the population one (divide by n), exactly relion_preprocess's
    ``calculateBackgroundAvgStddev``. ``radius_px`` defaults to ROUND(0.375 box) (the Extract
    job's "-1": 75% of the box). relion_preprocess also subtracts a least-squares plane fitted to
    the background first unless ``--no_ramp``; ``ramp=True`` does that. Images whose background
    std is below ``eps`` are only mean-subtracted (RELION skips them).
    """
    box = images.shape[-1]
    r = default_background_radius(box) if radius_px is None else radius_px
    c = torch.arange(box, device=images.device, dtype=images.dtype) - box // 2
    yy, xx = c[:, None].expand(box, box), c[None, :].expand(box, box)
    # weighted sums over a 0/1 background mask, not boolean indexing: 3x faster on CPU, and no
    # host-device sync on a GPU
    w = ((yy * yy + xx * xx) > r * r).to(images.dtype)
    n = float(w.sum())
    if n == 0:
        raise ValueError(f"no background pixels outside radius {r} in a {box} px box")
    x = images
    wf = w.reshape(-1)
    if ramp:  # least-squares plane a y + b x + c through the background pixels
        basis = torch.stack([yy, xx, torch.ones_like(yy)]).reshape(3, -1)
        wb = basis * wf
        coef = torch.linalg.solve(wb @ basis.T, (x.flatten(-2) @ wb.T).unsqueeze(-1)).squeeze(-1)  # (..., 3)
        x = x - (coef @ basis).reshape(x.shape)
    mean = (x.flatten(-2) @ wf) / n
    d = x - mean[..., None, None]
    std = torch.sqrt(((d * d).flatten(-2) @ wf) / n)  # two passes: no cancellation for large means
    std = torch.where(std < eps, torch.ones_like(std), std)
    return d / std[..., None, None]


# -- resampling and filters ------------------------------------------------------------------
def _centred_fft(x: torch.Tensor) -> torch.Tensor:
    # image centre box//2 -> index 0, FFT scaled by 1/n (pixel values survive the resize), DC -> box//2
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), norm="forward"), dim=dims)


def _centred_ifft(f: torch.Tensor) -> torch.Tensor:
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(f, dim=dims), norm="forward"), dim=dims).real


def _resize_axis(f: torch.Tensor, dim: int, m: int) -> torch.Tensor:
    """Centred spectrum along ``dim`` from n to m frequencies, keeping it Hermitian.

    Crop keeps k in [-(m//2), (m-1)//2]; for even m the dropped +m/2 is added onto -m/2 (they
    alias to one frequency on the coarse grid). Pad splits an even n's Nyquist -n/2 in halves
    at -n/2 and +n/2. So crop(pad(x)) == x, and pad(crop(x)) is a real-valued low-pass of x.
    """
    n = f.shape[dim]
    if m == n:
        return f
    if m < n:
        lo = n // 2 - m // 2
        out = f.narrow(dim, lo, m)
        if m % 2 == 0:
            out = torch.cat([out.narrow(dim, 0, 1) + f.narrow(dim, n // 2 + m // 2, 1), out.narrow(dim, 1, m - 1)], dim)
        return out
    body = f
    if n % 2 == 0:
        half = f.narrow(dim, 0, 1) / 2
        body = torch.cat([half, f.narrow(dim, 1, n - 1), half], dim)
    lo = m // 2 - n // 2
    shape = list(f.shape)
    parts = []
    for size in (lo, m - lo - body.shape[dim]):
        shape[dim] = size
        parts.append(f.new_zeros(shape))
    return torch.cat([parts[0], body, parts[1]], dim)


def fourier_resize(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Resample (..., box, box) images to (..., new_box, new_box) by cropping or zero-padding the
    Fourier transform. The new pixel size is ``old * box / new_box``.

    The centre pixel box//2 maps to new_box//2 (odd and even sizes). Pixel VALUES are preserved
    (the mean stays the mean, a band-limited image is resampled exactly); the sum of squares
    therefore scales with the pixel count, and white noise loses variance by (new_box/box)^2 on
    cropping (the frequencies beyond the new Nyquist are gone).
    """
    box = images.shape[-1]
    if images.shape[-2] != box:
        raise ValueError(f"square images expected, got {tuple(images.shape[-2:])}")
    if new_box == box:
        return images
    f = _centred_fft(images)
    f = _resize_axis(_resize_axis(f, -2, new_box), -1, new_box)
    return _centred_ifft(f).to(images.dtype)


def fourier_crop(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Downsample by Fourier cropping to ``new_box`` <= box (see ``fourier_resize``)."""
    if new_box > images.shape[-1]:
        raise ValueError(f"fourier_crop cannot enlarge {images.shape[-1]} px to {new_box} px; use fourier_pad")
    return fourier_resize(images, new_box)


def fourier_pad(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Upsample by Fourier zero-padding to ``new_box`` >= box (see ``fourier_resize``)."""
    if new_box < images.shape[-1]:
        raise ValueError(f"fourier_pad cannot shrink {images.shape[-1]} px to {new_box} px; use fourier_crop")
    return fourier_resize(images, new_box)


def lowpass(images: torch.Tensor, pixel_size: float, resolution_A: float,
            width_A: float | None = None) -> torch.Tensor:
    """Low-pass filter to ``resolution_A`` with a raised-cosine edge that ENDS at the cutoff.

    Frequencies finer than ``resolution_A`` are removed completely; those coarser than
    ``resolution_A + width_A`` pass untouched; in between the filter falls as a cosine.
    ``width_A`` defaults to two Fourier shells (RELION's default edge is 2 shells too, but
    centred on the cutoff, so RELION lets a little through beyond it).
    """
    filt = lowpass_filter(images.shape[-1], pixel_size, resolution_A, width_A, images.device, images.real.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(images) * filt, s=images.shape[-2:])


def lowpass_filter(box: int, pixel_size: float, resolution_A, width_A: float | None = None, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``lowpass``'s rfft2 filter, (box, box//2+1); ``resolution_A`` a number, or one per image
    ((N,) tensor: a (N, box, box//2+1) filter)."""
    f = radial_frequency_grid(box, True, pixel_size, device, dtype)
    if torch.is_tensor(resolution_A):
        resolution_A = resolution_A.to(device, dtype)[:, None, None]
    fc = 1.0 / resolution_A
    w = 2.0 / (box * pixel_size) if width_A is None else fc - 1.0 / (resolution_A + width_A)
    return _raised_cosine(f, fc - w, w) * (f < fc)


def phase_flip(images: torch.Tensor, ctf_rfft: torch.Tensor) -> torch.Tensor:
    """Flip the phases where the CTF is negative (RELION: ``if ctf < 0: F *= -1``).

    ``ctf_rfft`` is (..., box, box//2+1) in torch.fft.rfft2 layout (core.ctf.ctf_2d), broadcast
    against the images.
    """
    box = images.shape[-1]
    if ctf_rfft.shape[-2:] != (box, box // 2 + 1):
        raise ValueError(f"CTF of shape {tuple(ctf_rfft.shape)} does not match rfft2 of {box} px images")
    f = torch.fft.rfft2(images)
    return torch.fft.irfft2(torch.where(ctf_rfft < 0, -f, f), s=images.shape[-2:])


def resample_images(images: torch.Tensor, pixel_size: float, target_pixel_size: float,
                    target_box: int) -> torch.Tensor:
    """(N, b, b) images at ``pixel_size`` -> (N, target_box, target_box) at ``target_pixel_size``.

    Fourier-resample so the pixel size matches (to within one pixel of the box), then crop or
    zero-pad in real space about the centre pixel box//2; the physical scale is what is kept
    (a 64 px class at 4.2 A and a library at 3 A: 90 px of 3 A, then cropped to the library box).
    """
    box = images.shape[-1]
    m = max(2, int(round(box * pixel_size / target_pixel_size)))
    x = fourier_resize(images, m)
    if m == target_box:
        return x
    out = torch.zeros(x.shape[:-2] + (target_box, target_box), dtype=x.dtype, device=x.device)
    c_in, c_out = m // 2, target_box // 2
    lo = max(0, c_in - c_out)  # first input pixel kept
    hi = min(m, c_in + (target_box - c_out))
    o = c_out - (c_in - lo)
    out[..., o:o + hi - lo, o:o + hi - lo] = x[..., lo:hi, lo:hi]
    return out
