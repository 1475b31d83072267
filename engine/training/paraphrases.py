"""Prompt sets that test the dual encoder on wording it was never trained on.

Each set replaces every prompt of the example workspace (all variants) with plain-word
paraphrases without colour names; `kb evaluate` then measures how far the text role's
balanced accuracy moves with the wording. None of these sentences is a training caption
(tests/test_train_vlr.py checks it), and none may ever become one.

* `plain-c`, the held-out check the model card's target is judged on: written by a helper
  who saw only the six criteria, never the caption banks nor the example's prompts, on
  2026-12-04. It became the judged set on 2026-12-07, before any model was evaluated on it,
  because the developers had by then read `plain-b`'s figures on three candidates and shaped
  EA-2's everyday-word captions after them. (While moving this constant a developer saw
  plain-c's EA-1 and EA-2 prompts; the captions added that day come from plain-b's register,
  and none of plain-c's wording.)
* `plain-b`: written the same way before it, the judged set of earlier models; now a
  development set, reported and not judged.
* `plain-a`: written the same way, at the same time, and used while the banks were designed;
  a development set, reported and not judged.
* `novel-words` and `first`: the earlier robustness sets, written by the developers; they
  shaped the caption banks of earlier models, so they too are development sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PromptSets = Mapping[str, Mapping[str, Sequence[str]]]

PLAIN_A: PromptSets = {
    "EA-1": {
        "positive": (
            "The added metal rests mostly above the plate, with only a very shallow melt into it.",
            "Almost none of the weld bead has sunk below the plate's former top.",
            "The bead barely bites into the base metal; nearly all of it stays above.",
        ),
        "negative": (
            "A large portion of the bead has melted down well below the plate's former top.",
            "The weld has dug a deep pool into the base plate underneath it.",
            "Much of the added material is mixed into the plate instead of sitting above it.",
        ),
    },
    "EA-2": {
        "positive": (
            "Only a narrow band of the plate under the bead was changed by the heat.",
            "The heat-marked region beneath the weld is shallow, well under a millimetre.",
            "The plate below the bead looks mostly untouched, with just a slim heated strip.",
        ),
        "negative": (
            "The heat has altered the plate far down, more than a millimetre below the weld.",
            "A wide, deep band of heat-changed metal stretches into the plate under the bead.",
            "The plate underneath shows heat damage running a long way below the bead.",
        ),
    },
    "EA-3": {
        "positive": (
            "A well-defined bump of metal rises noticeably above the top of the plate.",
            "The bead forms a tall mound standing proud of the plate surface.",
            "There is an obvious hump of added material sitting high on the plate.",
        ),
        "negative": (
            "The added layer is nearly flat and hardly rises above the plate.",
            "There is barely any bump; the bead lies almost level with the plate top.",
            "No real bead stands up from the plate surface at all.",
        ),
    },
    "EA-4": {
        "positive": (
            "The bead is solid throughout with no visible holes or gas bubbles.",
            "Only a few tiny voids appear, and none of them is large.",
            "The deposited metal looks compact and free of trapped gas pockets.",
        ),
        "negative": (
            "The bead is riddled with many holes and gas bubbles.",
            "A single large void, easily visible, sits trapped inside the bead.",
            "Numerous voids scattered through the weld make it look spongy.",
        ),
    },
    "EA-5": {
        "positive": (
            "The bead is still packed with plenty of hard particles that did not melt.",
            "Many intact hard grains fill a good share of the weld metal.",
            "Large numbers of unmelted particles are found throughout the deposit.",
        ),
        "negative": (
            "Only a handful of hard particles are left; most have melted away.",
            "The weld metal looks mostly plain, with the hard grains largely gone.",
            "Hardly any intact particles can be seen inside the bead.",
        ),
    },
    "EA-6": {
        "positive": (
            "The hard particles are scattered uniformly from the top of the bead to its bottom.",
            "Particles appear at a similar density everywhere in the bead, without bare patches.",
            "The grains are distributed regularly across the whole weld cross-section.",
        ),
        "negative": (
            "The hard particles have settled in a heap at the bottom of the bead.",
            "Particles gather in tight clumps, leaving large areas of the bead empty.",
            "Most grains have sunk toward the lower edge, leaving the upper bead bare.",
        ),
    },
}

NOVEL_WORDS: PromptSets = {
    "EA-1": {
        "positive": (
            "the filler stayed on the surface and did not soak into the part",
            "hardly any of the part below got melted together with the filler",
        ),
        "negative": (
            "the filler is sunk well into the part below",
            "a big chunk of the part below got melted in with the filler",
        ),
    },
    "EA-2": {
        "positive": (
            "the area the torch heated inside the part is only shallow",
            "just a thin skin of the part below was affected by the heat",
        ),
        "negative": (
            "the area the torch heated reaches deep inside the part",
            "the heat left its mark a long way into the part below",
        ),
    },
    "EA-3": {
        "positive": (
            "the new material forms a clear raised ridge",
            "there is a good thick build-up on top",
        ),
        "negative": (
            "the new material makes hardly any ridge at all",
            "the build-up on top is very thin and flat",
        ),
    },
    "EA-4": {
        "positive": (
            "no air pockets in the new material",
            "the inside is tight with no empty bits",
        ),
        "negative": (
            "air pockets spoil the new material",
            "there is an air pocket much bigger than allowed",
        ),
    },
    "EA-5": {
        "positive": (
            "the hard bits are still packed into the new material",
            "a big part of the new material is hard bits",
        ),
        "negative": (
            "the hard bits have mostly disappeared",
            "the new material has only a sprinkle of hard bits left",
        ),
    },
    "EA-6": {
        "positive": (
            "the hard bits are mixed in evenly all over",
            "every part of the new material has about the same amount of hard bits",
        ),
        "negative": (
            "the hard bits have collected at the bottom",
            "the hard bits gather in lumps with bare areas around them",
        ),
    },
}

FIRST: PromptSets = {
    "EA-1": {
        "positive": (
            "the added metal mostly sits on top of the plate and barely melted into it",
            "only a little of the plate got melted and mixed in",
        ),
        "negative": (
            "the added metal sank far down into the plate",
            "a lot of the plate melted and got mixed into the added metal",
        ),
    },
    "EA-2": {
        "positive": (
            "the layer of plate changed by the heat is thin",
            "the heat only reached a little way into the plate",
        ),
        "negative": (
            "the heat changed the plate far down below the joint",
            "the layer of plate changed by the heat is very thick",
        ),
    },
    "EA-3": {
        "positive": (
            "the added metal forms a tall hump on the plate",
            "the track stands up high above the plate",
        ),
        "negative": (
            "the added metal is almost flat and hardly higher than the plate",
            "the track barely rises above the plate",
        ),
    },
    "EA-4": {
        "positive": (
            "solid metal with no holes or bubbles in it",
            "the metal is compact, without any holes",
        ),
        "negative": (
            "the metal is full of holes and bubbles",
            "there are big holes in the metal",
        ),
    },
    "EA-5": {
        "positive": (
            "lots of carbide grains are still there in the metal",
            "carbide grains fill a big part of the added metal",
        ),
        "negative": (
            "most of the carbide grains melted away",
            "only a few carbide grains are left in the metal",
        ),
    },
    "EA-6": {
        "positive": (
            "the carbide grains are spread out evenly everywhere",
            "the grains are scattered the same way from top to bottom",
        ),
        "negative": (
            "the carbide grains all sank to the bottom",
            "the carbide grains bunch together in a few spots",
        ),
    },
}

PLAIN_B: PromptSets = {
    "EA-1": {
        "positive": (
            "shallow melt-in beneath a bead that sits high",
            "bead almost entirely above the plate's starting level",
            "minimal mixing of weld metal into the base plate",
        ),
        "negative": (
            "deep melt pocket sunk into the base plate",
            "bead largely buried below the plate's starting level",
            "weld metal heavily blended downward into the plate",
        ),
    },
    "EA-2": {
        "positive": (
            "slim heat-scarred band just under the weld",
            "plate beneath the bead nearly unaltered by heating",
            "heat mark confined to a shallow strip, under one millimetre",
        ),
        "negative": (
            "thick heat-scarred region extending far into the plate",
            "heat-altered base metal reaching over a millimetre deep",
            "broad band of cooked metal deep beneath the bead",
        ),
    },
    "EA-3": {
        "positive": (
            "tall, rounded mound of weld on the plate",
            "bead crown standing well above the plate top",
            "pronounced raised cap of added metal",
        ),
        "negative": (
            "flat, almost level smear of metal on the plate",
            "barely any height above the plate top",
            "missing or very low weld bump",
        ),
    },
    "EA-4": {
        "positive": (
            "dense, void-free weld metal",
            "solid bead with only pinpoint holes",
            "compact cross-section without bubbles or cavities",
        ),
        "negative": (
            "bead full of holes and bubbles",
            "a single big cavity trapped inside the weld",
            "spongy weld metal with scattered voids",
        ),
    },
    "EA-5": {
        "positive": (
            "abundant unmelted hard grains throughout the bead",
            "weld crowded with intact tough particles",
            "high share of surviving particles in the deposit",
        ),
        "negative": (
            "sparse surviving grains, most melted into the metal",
            "bead nearly emptied of intact hard particles",
            "few leftover particles in mostly plain weld metal",
        ),
    },
    "EA-6": {
        "positive": (
            "uniform scatter of grains from crown to root",
            "particles at steady density across the whole bead",
            "regular sprinkling of hard grains, no gaps or clumps",
        ),
        "negative": (
            "grains piled up along the bead bottom",
            "clumped particles with bare gaps between them",
            "hard grains sunk to the base of the weld",
        ),
    },
}

PLAIN_C: PromptSets = {
    "EA-1": {
        "positive": (
            "Hardly any of the bead has sunk below the original plate surface.",
            "Shallow melt-in: the cladding barely digs into the steel.",
            "Very little mixing of the clad layer with the base metal underneath.",
        ),
        "negative": (
            "Too much of the bead sits down inside the plate, below the old surface line.",
            "Deep penetration into the steel, heavy mixing of clad and base metal.",
            "The weld has melted well into the substrate, so dilution is too high.",
        ),
    },
    "EA-2": {
        "positive": (
            "The heat-affected band under the fusion line stays thin everywhere.",
            "Only a shallow layer of altered steel below the bead.",
            "Heat damage in the plate stays under 1 mm deep all along.",
        ),
        "negative": (
            "The heat-affected zone runs too deep into the plate in places.",
            "A thick band of heat-changed steel reaching far below the fusion line.",
            "Heat has soaked deep into the base metal underneath the bead.",
        ),
    },
    "EA-3": {
        "positive": (
            "A clear, raised bead standing well above the plate surface.",
            "Good build-up height: the crown sits proudly over the line between the toes.",
            "Tall, well-formed weld cap on top of the steel.",
        ),
        "negative": (
            "The bead is nearly flat with the plate, barely any height.",
            "Hardly any build-up above the original surface line.",
            "Low, sunken deposit; the top hardly rises over the toes.",
        ),
    },
    "EA-4": {
        "positive": (
            "Solid, dense bead with only a few tiny pores.",
            "Almost no gas holes, and none of them big.",
            "Sound clad layer, voids small and rare.",
        ),
        "negative": (
            "Lots of gas pockets scattered through the bead.",
            "One big blowhole, wider than 150 um, in the clad.",
            "Porous deposit with too many holes and voids.",
        ),
    },
    "EA-5": {
        "positive": (
            "Plenty of tungsten carbide particles still intact throughout the bead.",
            "The hard particles survived the heat and fill a good share of the clad.",
            "Carbides mostly undissolved, lots of them left in the nickel matrix.",
        ),
        "negative": (
            "Most of the WC has melted away into the nickel.",
            "Only a thin scattering of hard particles left; the rest dissolved.",
            "Too little carbide remains, under 30 % of the bead.",
        ),
    },
    "EA-6": {
        "positive": (
            "Hard particles spread evenly from top to bottom of the bead.",
            "Uniform carbide spread, no clumps and no settling.",
            "The WC grains are evenly scattered across the whole clad layer.",
        ),
        "negative": (
            "Carbides have sunk and piled up near the fusion line.",
            "Hard particles clumped together in patches, with empty matrix between.",
            "Uneven deposit: WC settled to the bottom, top left bare.",
        ),
    },
}

# Name -> prompts, in the order the model card shows them; HELD_OUT is the one judged.
HELD_OUT = "plain-c"
DEVELOPMENT: dict[str, PromptSets] = {
    "plain-b": PLAIN_B,
    "plain-a": PLAIN_A,
    "novel-words": NOVEL_WORDS,
    "first": FIRST,
}
PARAPHRASES: dict[str, PromptSets] = {HELD_OUT: PLAIN_C, **DEVELOPMENT}
