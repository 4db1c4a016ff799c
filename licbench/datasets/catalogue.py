"""The datasets licbench knows by name: where they come from and how their bytes are checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a hashlib name: "sha256", "md5"
    hexdigest: str

    def matches(self, actual_hexdigest: str) -> bool:
        return actual_hexdigest.lower() == self.hexdigest.lower()


@dataclass(frozen=True)
class Archive:
    """One archive holding the dataset's images, possibly among many other files."""

    filename: str
    url: str
    # None: no checksum is published, so the first download is trusted and its sha256 recorded.
    checksum: Checksum | None
    # Glob matched against member base names: only these members are extracted.
    member_pattern: str


@dataclass(frozen=True)
class DatasetSource:
    name: str
    description: str
    licence: str
    homepage: str
    image_count: int
    # The images by name, when the dataset defines them (Kodak, Tecnick); empty otherwise.
    file_names: tuple[str, ...] = ()
    # Published per-file SHA-256 checksums.
    file_sha256: Mapping[str, str] = field(default_factory=dict)
    # Per-file downloads: each image is at file_base_url + its name.
    file_base_url: str = ""
    archive: Archive | None = None

    @property
    def source_url(self) -> str:
        return self.archive.url if self.archive else self.file_base_url

    @property
    def checksum_kind(self) -> str:
        if self.file_sha256:
            return "sha256 per file (built in)"
        if self.archive is None:
            return "none"
        if self.archive.checksum is None:
            return "sha256 of the archive, trusted on first download"
        return f"{self.archive.checksum.algorithm} of the archive (published)"


_KODAK_SHA256 = {
    "kodim01.png": "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    "kodim02.png": "4f4b74a79237e311d72cad958237b5f7088d8bce1c82305ebefe1a70e3022dfd",
    "kodim03.png": "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
    "kodim04.png": "e3b946107c5d3441c022f678d0c3caf1e224d81b1604ba840a4f88e562de61aa",
    "kodim05.png": "10349e963c5c813d327852f82c1795fa4148d69fedffc4c589bee458e3ac3d53",
    "kodim06.png": "363510303b715d4cbc384e1ce227e466b613a09e1b71ae985882bf8e7fbd9b18",
    "kodim07.png": "b77d3f006f42414bb242222e0482e750c0fb9e5ee8d4bed2f6f11c5605fe54a4",
    "kodim08.png": "ba23983c76b4832ee0e8af0592664756841a16779acd69f792e268fb6d13d6e7",
    "kodim09.png": "6a4361c2fc194feb4edaa9f9a4a0620fb9943e460ac7fdf037fb0f6dd6607a7d",
    "kodim10.png": "9dfb70f5867c29ff9ed6313683f19b3d867849e40fbc0c4c54a4a89df341cf23",
    "kodim11.png": "7936814b58b5387fce2e4e2488b4ec830dadd95fa9520f358ddb30990b50f2b6",
    "kodim12.png": "d78c37c2f04f23761ed2367dd77e2db584ddd4c3950833fecf89f199a8126980",
    "kodim13.png": "bc34a3ce58dea09dce1704c997171602de90cb34d0c8503a988b77f473d39b08",
    "kodim14.png": "55a94550ff18f3246c4074fd32b77b0c74447c26b6ad274d564d999c0450ba6e",
    "kodim15.png": "7538cbb80cb9103606c48b806eae57d56c885c7f90b9b3be70a41160f9cbb683",
    "kodim16.png": "a89c7268ccd4718ba424a99fc4643c572cf692ca6eae887185ceb4e9f11d2e54",
    "kodim17.png": "37afcc89fbdcb76d9518e04b2fc011027e2f4cd14b3b2f83cefd721641a47c5b",
    "kodim18.png": "1a9258c365988961d87a0598725b609139c303ad48a5aad6c503c3b1a87849aa",
    "kodim19.png": "b7450b264b1b0a411390d8931b112c27905a992520fc90569dc4b920aa32bbdc",
    "kodim20.png": "3b46c71e3b92a563820ba32936be8330c586c41f938efd94be938386aae4328a",
    "kodim21.png": "ac958597c82073f6bb65129c68f72b651db5b9efd82e11547d07350214bc268b",
    "kodim22.png": "1cee58eb1f2d9c7ebb254d208a03c783ce6cf2c4d8c2cf45e235dd23b4ce1b29",
    "kodim23.png": "e3111a2fd4da24af15d6459ef9eacfe54106b38e27b4a21821b75c3f5d2d5baf",
    "kodim24.png": "1071c68372cc5a01435c2c225a5cf7d4bb803846ec08bb6b3d6721b156d7cb96",
}

KODAK = DatasetSource(
    name="kodak",
    description="Kodak Lossless True Color Image Suite: 24 photographs, 768x512 or 512x768",
    licence="released by Eastman Kodak for unrestricted use (as stated on r0k.us)",
    homepage="http://r0k.us/graphics/kodak/",
    image_count=24,
    file_names=tuple(sorted(_KODAK_SHA256)),
    file_sha256=MappingProxyType(_KODAK_SHA256),
    file_base_url="http://r0k.us/graphics/kodak/kodak/",
)

CLIC = DatasetSource(
    name="clic",
    description="CLIC 2020 professional validation set: 41 high-resolution photographs",
    licence="collected by the CLIC organisers (compression.cc); check their terms before redistributing",
    homepage="https://clic.compression.cc/",
    image_count=41,
    archive=Archive(
        filename="professional_valid_2020.zip",
        url="https://data.vision.ee.ethz.ch/cvl/clic/professional_valid_2020.zip",
        checksum=Checksum("md5", "7111ee240435911db04dbc5f40d50272"),
        member_pattern="*.png",
    ),
)

_TECNICK_NAMES = tuple(f"RGB_OR_1200x1200_{index:03d}.png" for index in range(1, 101))

TECNICK = DatasetSource(
    name="tecnick",
    description="Tecnick TESTIMAGES, RGB_OR_1200x1200: 100 photographs, 1200x1200",
    licence="TESTIMAGES by N. Asuni and A. Giachetti, CC BY-NC-SA (see testimages.org)",
    homepage="https://testimages.org/",
    image_count=100,
    file_names=_TECNICK_NAMES,
    archive=Archive(
        filename="testimages.zip",
        # The plain SourceForge file URL answers with a web page; "/download" redirects to a mirror.
        url="https://sourceforge.net/projects/testimages/files/OLD/OLD_SAMPLING/testimages.zip/download",
        checksum=None,
        member_pattern="RGB_OR_1200x1200_???.png",
    ),
)

KNOWN_DATASETS: dict[str, DatasetSource] = {source.name: source for source in (KODAK, CLIC, TECNICK)}
