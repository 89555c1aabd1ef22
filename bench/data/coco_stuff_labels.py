"""COCO-Stuff's label hierarchy as data, and the 182 fine -> 27 coarse mapping derived from it.

Fine ids are the values in the stuffthingmaps PNGs: COCO category id - 1, so 0–90 are things
(11 of them unused by COCO detection) and 91–181 stuff. The coarse classes are the hierarchy's
supercategories in its own order (things: indoor then outdoor groups; stuff: likewise), which is
the 27-class numbering of STEGO and FeatUp: 0–11 things, 12–26 stuff.
"""
from __future__ import annotations

import numpy as np

from bench.data.common import IGNORE_INDEX

HIERARCHY: dict[str, dict[str, tuple[str, ...]]] = {
    "things": {
        "indoor": ("electronic", "appliance", "food", "furniture", "indoor", "kitchen"),
        "outdoor": ("accessory", "animal", "outdoor", "person", "sports", "vehicle"),
    },
    "stuff": {
        "indoor": ("ceiling", "floor", "food", "furniture", "rawmaterial", "textile", "wall", "window"),
        "outdoor": ("building", "ground", "plant", "sky", "solid", "structural", "water"),
    },
}

_THINGS = """
person:person
vehicle:bicycle,car,motorcycle,airplane,bus,train,truck,boat
outdoor:traffic light,fire hydrant,street sign,stop sign,parking meter,bench
animal:bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe
accessory:hat,backpack,umbrella,shoe,eye glasses,handbag,tie,suitcase
sports:frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,tennis racket
kitchen:bottle,plate,wine glass,cup,fork,knife,spoon,bowl
food:banana,apple,sandwich,orange,broccoli,carrot,hot dog,pizza,donut,cake
furniture:chair,couch,potted plant,bed,mirror,dining table,window,desk,toilet,door
electronic:tv,laptop,mouse,remote,keyboard,cell phone
appliance:microwave,oven,toaster,sink,refrigerator,blender
indoor:book,clock,vase,scissors,teddy bear,hair drier,toothbrush,hair brush
"""
"""Thing classes in fine-id order (0–90), one supercategory a line."""

_STUFF = """
banner:textile blanket:textile branch:plant bridge:building building-other:building bush:plant
cabinet:furniture cage:structural cardboard:rawmaterial carpet:floor ceiling-other:ceiling ceiling-tile:ceiling
cloth:textile clothes:textile clouds:sky counter:furniture cupboard:furniture curtain:textile
desk-stuff:furniture dirt:ground door-stuff:furniture fence:structural floor-marble:floor floor-other:floor
floor-stone:floor floor-tile:floor floor-wood:floor flower:plant fog:water food-other:food fruit:food
furniture-other:furniture grass:plant gravel:ground ground-other:ground hill:solid house:building
leaves:plant light:furniture mat:textile metal:rawmaterial mirror-stuff:furniture moss:plant mountain:solid
mud:ground napkin:textile net:structural paper:rawmaterial pavement:ground pillow:textile plant-other:plant
plastic:rawmaterial platform:ground playingfield:ground railing:structural railroad:ground river:water
road:ground rock:solid roof:building rug:textile salad:food sand:ground sea:water shelf:furniture
sky-other:sky skyscraper:building snow:ground solid-other:solid stairs:furniture stone:solid straw:plant
structural-other:structural table:furniture tent:building textile-other:textile towel:textile tree:plant
vegetable:food wall-brick:wall wall-concrete:wall wall-other:wall wall-panel:wall wall-stone:wall
wall-tile:wall wall-wood:wall water-other:water waterdrops:water window-blind:window window-other:window
wood:solid
"""
"""Stuff classes in fine-id order (91–181), each as name:supercategory."""


def _fine_classes() -> tuple[tuple[str, str], ...]:
    """(name, "supercategory-things|stuff") for fine ids 0–181."""
    things = [(name, f"{sup}-things") for line in _THINGS.strip().splitlines()
              for sup, names in [line.split(":")] for name in names.split(",")]
    stuff = [(name, f"{sup}-stuff") for name, sup in (entry.split(":") for entry in _STUFF.split())]
    return tuple(things + stuff)


FINE_CLASSES = _fine_classes()
COARSE_CLASSES = tuple(f"{sup}-{kind}" for kind, groups in HIERARCHY.items()
                       for sups in groups.values() for sup in sups)


def fine_to_coarse_table() -> np.ndarray:
    """A 256-entry lookup table: fine id -> coarse id; every other value (255 unlabeled) -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for fine, (_, coarse_name) in enumerate(FINE_CLASSES):
        table[fine] = COARSE_CLASSES.index(coarse_name)
    return table
