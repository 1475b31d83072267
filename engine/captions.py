"""Captions for training VLKB's dual encoder, and the prompts that test it without being trained.

A generated micrograph is captioned from its ground truth: for every assessment (EA-1..EA-6) its
label (accept / reject) picks a polarity, and the caption is one of many expert-style sentences
of that polarity: a core phrase (colour-free, in metallurgical terms, or colour-aware, in the
phase colours of the segmented maps) inside a framing phrase. The banks never contain the
example workspace's own prompts nor the robustness prompts below, so scoring with either
measures how the model generalises to wording it never saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ASSESSMENTS = ("EA-1", "EA-2", "EA-3", "EA-4", "EA-5", "EA-6")
POLARITIES = ("positive", "negative")  # positive = the assessment accepts

# Words that name a phase colour of the segmented maps (kept out of the robustness prompts).
COLOUR_WORDS = ("green", "red", "blue", "pink", "navy", "black", "magenta", "colour", "color")

# Framing phrases: they carry no polarity, so only the core tells the two apart.
FRAMES = (
    "{}",
    "a micrograph showing {}",
    "a cross-section with {}",
    "a DED bead cross-section showing {}",
    "a segmented micrograph of a Ni-WC clad with {}",
    "this deposit shows {}",
    "a laser-clad track with {}",
    "metallographic section: {}",
    "phase map of a nickel tungsten carbide bead with {}",
    "the inspector notes {}",
    "an overlay weld with {}",
    "an additively manufactured bead exhibiting {}",
)

# EA -> polarity -> (colour-free cores, colour-aware cores); each core is a noun phrase.
CORES: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "EA-1": {
        "positive": (
            (
                "low dilution",
                "minimal dilution of the substrate",
                "a shallow fusion boundary just under the original surface",
                "shallow penetration into the base metal",
                "nearly all of the clad above the baseline between the toes",
                "very little of the bead below the substrate surface",
                "a thin, flat melt-in zone under the clad",
                "dilution well below five percent",
                "a fusion line that hugs the original substrate surface",
                "limited melting of the substrate",
                "acceptable dilution",
                "a good bond with little mixing into the base material",
            ),
            (
                "a red fusion line just under the green bead",
                "only a thin sliver of green below the line through the red toes",
                "a flat red boundary beneath the green deposit",
                "a green bead resting on a shallow red fusion line",
            ),
        ),
        "negative": (
            (
                "high dilution",
                "excessive dilution into the substrate",
                "deep penetration into the base metal",
                "a deep, rounded fusion boundary far under the original surface",
                "a large share of the clad below the baseline between the toes",
                "a melt pool that dug deeply into the substrate",
                "dilution above five percent",
                "a deep bowl of remelted substrate under the clad",
                "strong mixing of base metal into the deposit",
                "a fusion line curving deep under the bead",
                "unacceptable dilution",
                "a bead sunk far into the base plate",
            ),
            (
                "a red fusion line dipping deep beneath the green bead",
                "a deep green region below the substrate surface bounded by a curved red line",
                "green clad reaching far down into the substrate inside a red boundary",
                "a deep red bowl under the green deposit",
            ),
        ),
    },
    "EA-2": {
        "positive": (
            (
                "a narrow heat-affected zone",
                "a thin HAZ beneath the fusion line",
                "a heat-affected zone shallower than one millimetre",
                "limited thermal damage to the substrate",
                "a shallow heat-affected band under the bead",
                "low heat input with a small HAZ",
                "a compact heat-affected region close to the fusion boundary",
                "an acceptable HAZ depth",
                "little of the substrate altered by heat",
                "a HAZ confined to a thin layer",
            ),
            (
                "a thin blue band under the red fusion line",
                "only a narrow blue zone below the bead",
                "a slim blue heat-affected layer hugging the red line",
                "a blue HAZ that stays close to the fusion line",
            ),
        ),
        "negative": (
            (
                "a wide heat-affected zone",
                "a deep HAZ extending well into the substrate",
                "a heat-affected zone deeper than one millimetre",
                "excessive heat input with a broad thermally affected region",
                "a thick heat-affected band reaching far below the bead",
                "an oversized HAZ",
                "thermal damage spreading deep into the base metal",
                "an unacceptable HAZ depth",
                "a large part of the substrate altered by heat",
                "a heat-affected region that runs far from the fusion boundary",
            ),
            (
                "a thick blue region reaching far below the red fusion line",
                "a broad blue heat-affected zone deep in the substrate",
                "a wide blue band extending well under the bead",
                "a deep blue HAZ spreading far from the red line",
            ),
        ),
    },
    "EA-3": {
        "positive": (
            (
                "a distinct reinforcement above the substrate",
                "a tall, well-formed bead",
                "a clearly raised clad track",
                "good build-up height above the baseline",
                "a convex bead standing proud of the surface",
                "sufficient reinforcement height",
                "a thick deposit with a pronounced crown",
                "an acceptable bead height",
                "plenty of material above the original surface",
                "a high, rounded cap of clad",
            ),
            (
                "a tall green dome above the red line",
                "a thick green bead rising well above the substrate",
                "a high green crown over the fusion line",
                "a large green cap standing above the surface",
            ),
        ),
        "negative": (
            (
                "a flat deposit with almost no reinforcement",
                "a thin smear of material barely above the surface",
                "insufficient build height",
                "a low, flat bead with little material above the baseline",
                "hardly any reinforcement above the substrate",
                "a shallow, flattened track",
                "a bead height far too small",
                "an unacceptable lack of reinforcement",
                "a thin layer of clad with no crown",
                "a deposit that barely rises above the base plate",
            ),
            (
                "only a thin green strip above the red line",
                "a flat sliver of green barely above the surface",
                "a low green band with no dome",
                "a thin green film over the fusion line",
            ),
        ),
    },
    "EA-4": {
        "positive": (
            (
                "no porosity",
                "a dense deposit without gas pores",
                "sound, pore-free clad",
                "a fully dense bead with no voids",
                "only a few tiny pores",
                "negligible porosity",
                "no large pores anywhere in the bead",
                "no pore larger than 150 micrometres",
                "only small, isolated pores well under the size limit",
                "acceptable porosity",
                "a compact matrix free of gas bubbles",
                "no trapped gas in the deposit",
            ),
            (
                "a green bead with hardly any dark blue dots",
                "no dark navy spots in the bead",
                "a bead with no dark blue holes",
                "only a couple of tiny dark blue specks",
            ),
        ),
        "negative": (
            (
                "significant porosity",
                "many gas pores throughout the bead",
                "large voids in the deposit",
                "porous clad with big round holes",
                "trapped gas bubbles in the bead",
                "a pore wider than 150 micrometres",
                "a single oversized pore in an otherwise dense bead",
                "one isolated gas void larger than the allowed size",
                "excessive porosity",
                "unacceptable porosity",
                "coarse gas voids scattered through the clad",
                "a spongy deposit full of holes",
            ),
            (
                "large dark blue pores scattered through the green bead",
                "navy round voids inside the bead",
                "big dark blue holes in the deposit",
                "many dark blue circles in the green clad",
                "one big dark blue hole in an otherwise clean green bead",
            ),
        ),
    },
    "EA-5": {
        "positive": (
            (
                "a high fraction of undissolved tungsten carbide",
                "plenty of WC particles retained in the matrix",
                "carbides covering a large share of the bead",
                "little carbide dissolution",
                "a dense loading of hard carbide particles",
                "a carbide content above thirty percent",
                "well-preserved tungsten carbide grains",
                "an acceptable carbide fraction",
                "abundant reinforcing particles in the nickel matrix",
                "a rich carbide population",
            ),
            (
                "a green bead packed with pink particles",
                "lots of pink carbides across the bead",
                "pink particles covering much of the green matrix",
                "a dense crowd of pink carbides",
            ),
        ),
        "negative": (
            (
                "heavy carbide dissolution",
                "few carbide particles left",
                "most of the WC dissolved into the nickel matrix",
                "a low carbide fraction",
                "sparse carbides in a bead that is mostly matrix",
                "a carbide content below thirty percent",
                "tungsten carbide largely lost to dissolution",
                "an unacceptable carbide fraction",
                "too few reinforcing particles",
                "a thin scattering of carbide grains",
            ),
            (
                "only scattered pink particles in a mostly green bead",
                "a mainly green bead with few pink particles",
                "very little pink in the green matrix",
                "a handful of pink carbides in green clad",
            ),
        ),
    },
    "EA-6": {
        "positive": (
            (
                "a uniform carbide distribution",
                "carbides evenly spread through the bead",
                "a homogeneous dispersion of WC particles",
                "no segregation or clustering of carbides",
                "even particle spacing from the crown to the fusion line",
                "a consistent carbide density across the deposit",
                "an acceptable carbide distribution",
                "well-dispersed reinforcing particles",
                "the same carbide share in every part of the bead",
                "randomly and evenly scattered carbides",
            ),
            (
                "pink particles spread uniformly across the green clad",
                "an even sprinkling of pink carbides over the bead",
                "pink carbides dispersed evenly from top to bottom",
                "evenly spaced pink particles everywhere in the bead",
            ),
        ),
        "negative": (
            (
                "carbides sunk to the bottom of the bead",
                "segregated carbides near the fusion line",
                "clustered carbide particles with carbide-free areas",
                "an inhomogeneous carbide distribution",
                "carbides gathered into agglomerates",
                "a strong carbide gradient from top to bottom",
                "an unacceptable carbide distribution",
                "carbide-depleted regions next to dense carbide clusters",
                "particles settled towards the substrate",
                "an uneven patchy spread of carbides",
            ),
            (
                "pink particles piled at the bottom of the green bead",
                "pink particles bunched into clumps with bare green between them",
                "pink carbides concentrated near the red line",
                "dense pink patches and empty green areas",
            ),
        ),
    },
}

# Everyday-language cores (no colour names), a third register next to the expert and the
# colour-aware ones: experts do not always write prompts in metallurgical terms.
PLAIN_CORES: dict[str, dict[str, tuple[str, ...]]] = {
    "EA-1": {
        "positive": (
            "deposited metal sitting on the base with little melting beneath it",
            "a deposit that did not dig into the base",
            "barely any base metal melted into the deposit",
            "a shallow join between deposit and base",
            "most of the deposited material above the old surface",
            "new metal resting on the plate with hardly any of the plate melted",
            "weld metal that stays above the surface of the part",
            "little mixing of plate metal into the weld",
            "a shallow melt under the added layer",
            "a base that barely melted under the track",
            "a fusion that only just goes below the surface",
            "a weld that did not eat into the part beneath it",
        ),
        "negative": (
            "a deposit that dug deep into the base",
            "a large amount of melted base metal under the deposit",
            "a join that reaches far down into the base",
            "much of the deposited material below the old surface",
            "a deep melted pocket under the track",
            "new metal that melted deep into the plate",
            "plenty of plate metal mixed into the weld",
            "a melt that went far below the surface of the part",
            "a deep melted zone under the added layer",
            "a track that burned deep into the base",
            "a big share of the weld below the old surface",
            "a weld that ate a deep hollow into the part beneath it",
        ),
    },
    "EA-2": {
        "positive": (
            "heat damage that stays close to the join",
            "a small heat-marked region under the deposit",
            "little heat damage in the base",
            "a shallow band of heated base metal",
            "a plate under the weld hardly changed by the heat",
            "heat-changed metal only in a thin strip under the weld",
            "heat that did not go deep into the base",
            "a shallow layer of heat-changed base metal",
            "heat effects limited to just under the join",
            "a thin zone of base metal touched by the heat",
            "heat that stayed near the top of the plate",
            "only a slim heat-changed layer in the part underneath",
        ),
        "negative": (
            "heat damage reaching deep into the base",
            "a large heat-marked region under the deposit",
            "heat that spread far down into the base metal",
            "a deep band of heated base metal",
            "base metal changed by the heat deep below the weld",
            "a thick zone of base metal changed by heat",
            "heat effects reaching a long way down into the plate",
            "a deep zone of heat-changed plate",
            "heat that went far into the part underneath",
            "a broad heat-changed layer under the join",
            "heat-altered metal deep down in the base",
            "much of the plate under the weld changed by the heat",
        ),
    },
    "EA-3": {
        "positive": (
            "a high mound of deposited metal",
            "a track that sticks up well above the base",
            "a thick raised deposit",
            "a bead with plenty of height",
            "added metal piled up high",
            "a tall track on top of the plate",
            "a thick hump of weld metal",
            "a weld that stands well above the surface",
            "a generous heap of new metal on the part",
        ),
        "negative": (
            "a low flat deposit",
            "a track that hardly sticks up above the base",
            "very little height on the deposit",
            "a thin flat coating on the base",
            "a weld nearly level with the plate",
            "hardly any added metal above the surface",
            "a flat thin track",
            "almost no height to the weld",
            "a layer of new metal so thin it hardly shows",
        ),
    },
    "EA-4": {
        "positive": (
            "solid deposit without gaps",
            "no voids in the deposited metal",
            "a deposit with nothing empty inside",
            "clean solid metal throughout",
            "no holes in the deposit",
            "weld metal with no bubbles",
            "solid metal all the way through",
            "no gas holes anywhere",
            "at most a few tiny specks of holes",
            "only a few very small holes and none of any size",
        ),
        "negative": (
            "empty gaps inside the deposit",
            "a deposit with large voids inside",
            "trapped gas left in the metal",
            "many round empty spots in the deposit",
            "holes and bubbles all through the weld",
            "one big hole in the deposit",
            "a single large void in the metal",
            "a large gas bubble trapped in the weld",
            "lots of small holes in the metal",
            "a hole that is too big, even if it is the only one",
        ),
    },
    "EA-5": {
        "positive": (
            "many hard particles still in the deposit",
            "plenty of carbide left in the metal",
            "a deposit crowded with hard particles",
            "most of the carbide kept intact",
            "lots of hard grains left in the weld",
            "hard particles that are still there",
            "a weld full of carbide grains",
            "most of the hard grains survived",
            "a large share of the deposit made of hard grains",
        ),
        "negative": (
            "only a few hard particles left in the deposit",
            "carbide mostly gone from the metal",
            "hardly any hard particles in the deposit",
            "a deposit with little carbide left",
            "hard grains that melted away",
            "carbide grains that are mostly gone",
            "just a few grains left in the weld",
            "hard particles dissolved into the metal",
            "a deposit that lost most of its hard grains",
        ),
    },
    "EA-6": {
        "positive": (
            "hard particles spread the same everywhere in the deposit",
            "an even mix of particles from top to bottom",
            "particles evenly placed through the whole deposit",
            "no crowded or empty patches of particles",
            "grains spread out evenly across the weld",
            "the same amount of grains everywhere",
            "particles evenly mixed top to bottom",
            "no clumps of grains",
            "grains sprinkled evenly through the deposit",
        ),
        "negative": (
            "hard particles piled up at the bottom",
            "particles crowded into a few patches",
            "an uneven mix with empty and crowded areas",
            "particles that settled low in the deposit",
            "grains that sank down to the bottom of the weld",
            "grains clumped together in places",
            "most grains sitting low near the join",
            "a patchy spread of grains with empty areas",
            "grains crowded on one side and missing on the other",
        ),
    },
}

# Plain-word paraphrases without colour names, written for a robustness check of the first
# model. Its EA-2 failure on them shaped the everyday cores above, so they are no longer a fair
# test; they stay as a development check. They are never training captions.
DEVELOPMENT_PARAPHRASES: dict[str, dict[str, tuple[str, ...]]] = {
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


# The robustness check: fresh paraphrases in plain words, no colour names, written after the
# caption banks were frozen and in words the banks avoid ("filler", "hard bits", "air
# pockets"). tests/test_train_vlr.py checks they are neither training captions nor colour words.
ROBUSTNESS_PROMPTS: dict[str, dict[str, tuple[str, ...]]] = {
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


@dataclass(frozen=True)
class Caption:
    assessment: str
    polarity: str
    text: str
    colour: bool  # names phase colours
    everyday: bool = False  # plain words, no metallurgical terms (PLAIN_CORES)


def caption_bank() -> list[Caption]:
    """Every training caption: each core in each frame, both polarities of every assessment."""
    bank: dict[str, Caption] = {}
    for key in ASSESSMENTS:
        for polarity in POLARITIES:
            expert, coloured = CORES[key][polarity]
            plain = PLAIN_CORES[key][polarity]
            for cores, colour, everyday in (
                (expert, False, False), (plain, False, True), (coloured, True, False)
            ):
                for core in cores:
                    for frame in FRAMES:
                        text = frame.format(core)
                        caption = Caption(key, polarity, text, colour, everyday)
                        bank.setdefault(normalise(text), caption)
    return list(bank.values())


def normalise(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: how captions are compared."""
    return re.sub(r"\s+", " ", text.lower()).strip(" .;:")


def names_a_colour(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return any(word in words for word in COLOUR_WORDS)
