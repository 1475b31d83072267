"""Training captions for VLKB's dual encoder, generated from a small grammar of expert wording.

A generated micrograph is captioned from its ground truth: for every assessment (EA-1..EA-6)
its label (accept / reject) picks a polarity, and the caption is drawn from that polarity's
bank. Each bank is expanded from templates whose slots take many words for the same thing
(bead, deposit, clad, weld, added metal ...; pores, voids, holes, gas pockets ...), in three
registers: metallurgical terms, everyday words, and the phase colours of segmented maps.

Two choices make the banks teach meaning rather than keywords:

* quantifiers appear on both polarities of an assessment wherever the wording allows it
  ("hardly any pores" accepts EA-4, "hardly any of the bead free of pores" rejects it; "a few
  tiny pores" accepts, "a few large pores" rejects), and size words change sides between
  assessments ("a deep melt" rejects EA-1, "a tall bead" accepts EA-3), so a generic word
  alone rarely decides a polarity;
* nouns, verbs and sentence shapes vary independently of the polarity, so what the model
  learns to separate is what the sentence says about the bead.

The banks are deterministic (the same captions every run) and never contain the example
workspace's prompts nor the paraphrase sets of engine.training.paraphrases that test the model.
"""

from __future__ import annotations

import itertools
import random
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ASSESSMENTS = ("EA-1", "EA-2", "EA-3", "EA-4", "EA-5", "EA-6")
POLARITIES = ("positive", "negative")  # positive = the assessment accepts

# Words that name a phase colour of the segmented maps (never in the plain-word test prompts).
COLOUR_WORDS = ("green", "red", "blue", "pink", "navy", "black", "magenta", "colour", "color")
# Metallurgical terms: a caption without any of them is in plain words.
JARGON = (
    "dilution", "diluted", "haz", "heat-affected", "thermally", "reinforcement", "porosity",
    "substrate", "fusion", "carbide", "carbides", "wc", "tungsten", "matrix", "segregation",
    "segregated", "homogeneous", "inhomogeneous", "dispersion", "penetration", "clad",
    "cladding", "ded", "ni-wc", "micrometres", "mm", "millimetre", "toes", "baseline",
    "consolidated", "micrograph", "metallographic", "cross-section", "dissolution",
)

# --- shared vocabulary ----------------------------------------------------------------------

# Slot name -> words. A template names slots in braces; every combination is a candidate.
SHARED: dict[str, tuple[str, ...]] = {
    "deposit": (
        "bead", "deposit", "clad", "clad layer", "cladding", "track", "weld bead", "weld",
        "overlay", "deposited metal", "added metal", "new material", "filler metal", "coating",
        "added layer", "built-up metal",
    ),
    "base": (
        "substrate", "base metal", "base plate", "plate", "part", "workpiece", "base material",
        "metal underneath", "parent metal", "steel below", "underlying plate", "component",
    ),
    "surface": (
        "original surface", "substrate surface", "top of the plate", "plate surface",
        "old surface line", "baseline between the toes", "level of the base",
        "surface of the part", "former top of the plate",
    ),
    "boundary": (
        "fusion line", "fusion boundary", "join", "bond line", "interface", "deposit",
        "bead", "melt boundary",
    ),
    "hardly": ("barely", "hardly", "only just", "scarcely", "only slightly", "just"),
    "far": ("deep", "far", "well down", "a long way", "deeply", "much too far"),
    "tiny_share": (
        "hardly any", "very little", "only a sliver", "only a small part", "a tiny fraction",
        "almost none", "next to nothing",
    ),
    "big_share": (
        "much", "a large share", "a big part", "a lot", "a considerable portion",
        "a good deal", "too much", "a large fraction",
    ),
    "most": (
        "nearly all", "almost all", "most", "the bulk", "practically all", "virtually all",
        "the great majority",
    ),
    "sits": ("sits", "rests", "lies", "stays", "remains"),
    "particles": (
        "carbides", "carbide particles", "tungsten carbide particles", "WC particles",
        "WC grains", "hard particles", "hard grains", "reinforcing particles",
        "carbide grains", "ceramic particles", "particles", "grains of carbide",
    ),
    "pores": (
        "pores", "voids", "holes", "gas pores", "gas bubbles", "bubbles", "gas pockets",
        "air pockets", "cavities", "blowholes", "empty spots", "gaps",
    ),
    "pore": (
        "pore", "void", "hole", "gas pore", "gas bubble", "bubble", "gas pocket", "air pocket",
        "cavity", "blowhole",
    ),
    # colour words of the default legend
    "green": (
        "green bead", "green region", "green deposit", "green clad", "green area",
        "green layer",
    ),
    "red_line": ("red fusion line", "red line", "red boundary", "red curve"),
    "blue_zone": ("blue band", "blue zone", "blue layer", "blue region", "blue area"),
    "pink": ("pink particles", "pink carbides", "pink dots", "pink grains", "pink specks"),
    "dark_spots": (
        "dark blue spots", "dark blue holes", "navy dots", "dark blue circles", "navy voids",
        "dark blue specks",
    ),
    "dark_spot": ("dark blue spot", "dark blue hole", "navy dot", "dark blue circle"),
}


@dataclass(frozen=True)
class Templates:
    """One polarity of one assessment: noun-phrase and clause templates, and colour ones."""

    phrases: tuple[str, ...]
    clauses: tuple[str, ...]
    colour: tuple[str, ...]
    slots: Mapping[str, tuple[str, ...]]


# --- the assessments ------------------------------------------------------------------------

EA1_SLOTS = {
    "low": ("little", "hardly any", "very little", "almost no", "minimal", "only slight",
            "limited", "no real"),
    "high": ("a lot of", "much", "heavy", "strong", "excessive", "extensive", "considerable",
             "far too much"),
    "mixing": ("mixing", "melting", "intermixing", "melt-in", "remelting", "blending"),
    "shallow_melt": ("a shallow", "a thin", "a slight", "a very shallow", "only a shallow",
                     "a small", "a flat"),
    "deep_melt": ("a deep", "a large", "a big", "a bowl-shaped", "a very deep",
                  "a rounded deep", "a thick"),
    "melt": ("melt", "melted zone", "melt pool", "fusion zone", "remelted layer",
             "melt-back", "penetration"),
    "melted": ("melted", "dug", "sank", "cut", "bit", "penetrated", "soaked", "burned"),
    "low_dilution": ("low", "minimal", "slight", "acceptable", "limited", "small", "very low"),
    "high_dilution": ("high", "excessive", "heavy", "severe", "unacceptable", "large",
                      "very high"),
    "under_5": ("below 5 percent", "under five percent", "of less than 5 %",
                "within the 5 % limit", "well under 5 percent"),
    "over_5": ("above 5 percent", "over five percent", "of more than 5 %",
               "beyond the 5 % limit", "well over 5 percent"),
    "close": ("that stays close to", "just below", "hugging", "that follows",
              "right under", "only slightly below"),
    "far_below": ("far below", "deep under", "curving deep beneath", "that dips well below",
                  "a long way under"),
    "only_part": ("only part", "not much", "hardly any", "barely half", "too little",
                  "only a fraction", "only a small part", "very little"),
    "shallow_pred": ("shallow", "flat", "thin", "only skin deep", "very slight"),
    "deep_pred": ("deep", "very deep", "bowl-shaped", "far too deep", "large"),
}

EA2_SLOTS = {
    "haz": ("heat-affected zone", "HAZ", "heat-affected layer", "heat-affected region",
            "heat-affected band", "thermally affected zone", "zone altered by heat",
            "region changed by the heat", "heat-altered layer", "heat-damaged zone",
            "band of heat-changed metal", "heat-marked region"),
    "thin": ("thin", "narrow", "shallow", "slim", "small", "compact", "limited", "modest"),
    "thick": ("thick", "wide", "deep", "broad", "large", "extensive", "oversized", "massive"),
    "under_1mm": ("shallower than one millimetre", "under 1 mm deep",
                  "less than a millimetre deep", "well within 1 mm",
                  "that stays within a millimetre of the fusion line"),
    "over_1mm": ("deeper than one millimetre", "more than 1 mm deep",
                 "reaching well past a millimetre", "that extends far below the fusion line",
                 "over a millimetre deep"),
    "damage": ("heat damage", "thermal damage", "heat effect", "thermal alteration",
               "change from the heat", "heat tinting"),
    "low": ("little", "hardly any", "very little", "only slight", "minimal", "limited"),
    "high": ("a lot of", "much", "heavy", "severe", "extensive", "widespread"),
    "altered": ("altered", "changed", "affected", "damaged", "marked", "transformed"),
    "strongly": ("strongly", "heavily", "badly", "deeply", "a long way down"),
    "heat_in_low": ("low", "moderate", "well-controlled", "limited", "gentle"),
    "heat_in_high": ("high", "excessive", "too much", "very high", "uncontrolled"),
    "little_way": ("a little way", "a short way", "a small distance", "just below the join"),
    "confined": ("confined", "limited", "kept", "restricted"),
    "spreads": ("spreads", "runs", "reaches", "extends"),
    # the everyday register: what a heat-affected zone looks like to someone without the term
    "hot_part": ("heated area", "hot zone", "heat scar", "heat mark", "heat-scarred band",
                 "heated band", "heat-changed strip", "scorched layer", "band of cooked metal",
                 "heat-stained layer", "heat-tinted strip", "baked band", "burnt layer",
                 "heat-hit region"),
    "got_hot": ("got hot", "was heated", "was cooked", "was scorched", "was baked",
                "was changed by the heating", "took the heat", "was heat-marked"),
    "nearly": ("nearly", "almost", "largely", "mostly", "practically", "close to"),
}

EA3_SLOTS = {
    "mound": ("bead", "deposit", "track", "clad", "crown", "mound", "ridge", "hump", "dome",
              "cap", "build-up", "weld"),
    "tall": ("tall", "high", "raised", "pronounced", "prominent", "thick", "well-formed",
             "distinct", "clearly raised", "convex", "generous", "big"),
    "flat": ("flat", "low", "thin", "shallow", "flattened", "barely raised", "poorly defined",
             "tiny", "faint", "small"),
    "stands": ("stands", "rises", "sticks up", "protrudes", "bulges", "towers"),
    "well": ("well", "clearly", "high", "noticeably", "proud", "a good way"),
    "plenty": ("plenty of", "a lot of", "a good amount of", "a thick layer of", "lots of",
               "a generous amount of"),
    "little": ("little", "hardly any", "almost no", "very little", "too little",
               "only a thin layer of"),
    "material": ("material", "metal", "added metal", "build-up", "deposited material"),
    "good": ("good", "sufficient", "enough", "ample", "acceptable", "adequate"),
    "poor": ("insufficient", "poor", "too little", "inadequate", "hardly any", "no"),
    "height": ("reinforcement", "build-up height", "bead height", "crown height",
               "reinforcement height", "height"),
    "over_03": ("more than 0.3 mm above the surface", "at least 0.3 millimetres high",
                "well over 0.3 mm tall"),
    "under_03": ("less than 0.3 mm above the surface", "under 0.3 millimetres high",
                 "well below 0.3 mm tall"),
    "tall_pred": ("tall", "high", "thick", "well raised", "clearly above the plate"),
    "flat_pred": ("flat", "nearly level with the plate", "almost flush with the surface",
                  "thin", "low", "barely there"),
    "no_real": ("no real", "hardly any", "only a faint", "no clear"),
}

EA4_SLOTS = {
    "none": ("no", "hardly any", "only a few tiny", "very few small", "almost no",
             "no visible", "a couple of tiny", "only isolated small"),
    "many": ("many", "lots of", "numerous", "a lot of", "plenty of", "large", "big",
             "coarse", "clustered", "scattered"),
    "dense": ("dense", "solid", "sound", "compact", "fully dense", "pore-free", "void-free",
              "tight", "consolidated"),
    "free_of": ("free of", "without", "with no", "clear of"),
    "full_of": ("full of", "riddled with", "peppered with", "with many", "dotted with"),
    "porous": ("porous", "spongy", "pore-riddled", "gassy", "bubbly"),
    "single": ("a single", "one", "a lone", "just one"),
    "big": ("large", "oversized", "big", "huge", "wide", "coarse"),
    "too_big": ("larger than 150 micrometres", "over the size limit", "wider than 0.15 mm",
                "bigger than allowed", "too big"),
    "small": ("small", "tiny", "minute", "fine"),
    "low_porosity": ("negligible", "acceptable", "minimal", "very low", "hardly any"),
    "high_porosity": ("excessive", "unacceptable", "heavy", "severe", "widespread"),
    "dense_pred": ("dense", "solid", "sound", "compact", "solid all the way through"),
    "porous_pred": ("porous", "full of holes", "spongy", "riddled with pores",
                    "peppered with voids"),
}

EA5_SLOTS = {
    "many": ("many", "lots of", "plenty of", "abundant", "a dense packing of",
             "a high share of", "numerous", "a large amount of", "a crowd of"),
    "few": ("few", "only a few", "hardly any", "sparse", "a thin scattering of",
            "a handful of", "scattered"),
    "packed": ("packed", "filled", "loaded", "crowded", "densely filled", "rich"),
    "dissolution": ("dissolution", "carbide dissolution", "melting of the carbides",
                    "loss of carbide", "carbide loss"),
    "little": ("little", "hardly any", "very little", "minimal", "limited"),
    "heavy": ("heavy", "severe", "extensive", "strong", "excessive"),
    "content": ("content", "fraction", "share", "volume fraction", "area fraction"),
    "over_30": ("above 30 percent", "over thirty percent", "of at least 30 %",
                "well above 30 %"),
    "under_30": ("below 30 percent", "under thirty percent", "of less than 30 %",
                 "well below 30 %"),
    "intact": ("intact", "undissolved", "well-preserved", "retained", "surviving",
               "unmelted"),
    "lost": ("dissolved", "melted-away", "lost", "mostly dissolved", "vanished"),
    "survived": ("survived", "remain", "are still there", "stayed intact",
                 "did not dissolve"),
    "dissolved": ("dissolved", "melted", "were lost", "went into solution", "disappeared"),
    "hardly_of": ("hardly any", "few", "very few", "little", "almost none"),
    "cover": ("cover", "fill", "take up", "make up", "occupy"),
    "large": ("large", "big", "good", "major"),
    "small": ("small", "tiny", "minor", "modest"),
    "matrix": ("matrix", "plain metal", "nickel", "binder metal", "bare metal"),
    "most": ("nearly all", "almost all", "most", "the bulk", "practically all", "many",
             "the great majority"),
}

EA6_SLOTS = {
    "spread": ("spread", "distributed", "dispersed", "scattered", "sprinkled", "mixed"),
    "evenly": ("evenly", "uniformly", "homogeneously", "regularly", "consistently"),
    "through": ("through", "across", "over", "all over", "throughout"),
    "uniform": ("uniform", "even", "homogeneous", "regular", "consistent"),
    "uneven": ("uneven", "patchy", "inhomogeneous", "irregular", "lopsided", "non-uniform"),
    "distribution": ("distribution", "dispersion", "spread", "spacing", "arrangement"),
    "clumping": ("segregation", "clustering", "clumping", "settling", "bunching",
                 "agglomeration"),
    "strong": ("strong", "severe", "marked", "heavy", "obvious"),
    "density": ("density", "amount", "share", "number", "concentration"),
    "everywhere": ("everywhere in the bead", "from top to bottom",
                   "in every part of the deposit", "across the whole cross-section",
                   "from the crown down to the fusion line"),
    "bare": ("bare", "empty", "particle-free", "depleted", "clear"),
    "patches": ("patches", "areas", "gaps", "zones", "pockets"),
    "clusters": ("clusters", "clumps", "lumps", "heaps", "dense patches", "agglomerates"),
    "sunk": ("sunk", "settled", "piled up", "collected", "concentrated", "gathered"),
    "at": ("at", "towards", "near", "close to"),
    "bottom": ("bottom", "fusion line", "lower part", "base of the bead", "lower edge",
               "bottom of the deposit"),
    "sank": ("sank", "settled", "dropped", "fell", "drifted"),
    "clustered": ("clustered", "clumped", "bunched", "gathered", "grouped"),
    "gradient": ("gradient", "difference in particle density", "change in carbide share",
                 "drop in particle count"),
}

TEMPLATES: dict[str, dict[str, Templates]] = {
    "EA-1": {
        "positive": Templates(
            phrases=(
                "{low} {mixing} of the {base} into the {deposit}",
                "{shallow_melt} {melt} under the {deposit}",
                "a {deposit} that {hardly} {melted} into the {base}",
                "{low_dilution} dilution",
                "dilution {under_5}",
                "a fusion boundary {close} the {surface}",
                "{most} of the {deposit} above the {surface}",
                "{tiny_share} of the {deposit} below the {surface}",
                "{low} melting of the {base} under the {deposit}",
                "{big_share} of the {deposit} above the {surface}",
            ),
            clauses=(
                "the {deposit} {sits} on top of the {base} and {hardly} {melted} into it",
                "{most} of the {deposit} {sits} above the {surface}",
                "{tiny_share} of the {deposit} {sits} below the {surface}",
                "the {base} {hardly} melted under the {deposit}",
                "the {deposit} {hardly} mixed with the {base}",
                "the melt into the {base} is {shallow_pred}",
                "the join between the {deposit} and the {base} is {shallow_pred}",
            ),
            colour=(
                "the {green} sits above a shallow {red_line}",
                "only a thin sliver of {green} below the line between the red toes",
                "a {red_line} just under the {green}",
                "a flat {red_line} close to the surface beneath the {green}",
                "{most} of the {green} above the {red_line} toes",
            ),
            slots=EA1_SLOTS,
        ),
        "negative": Templates(
            phrases=(
                "{high} {mixing} of the {base} into the {deposit}",
                "{deep_melt} {melt} under the {deposit}",
                "a {deposit} that {melted} {far} into the {base}",
                "{high_dilution} dilution",
                "dilution {over_5}",
                "a fusion boundary {far_below} the {surface}",
                "{big_share} of the {deposit} below the {surface}",
                "{only_part} of the {deposit} above the {surface}",
                "{high} melting of the {base} under the {deposit}",
            ),
            clauses=(
                "the {deposit} {melted} {far} into the {base}",
                "{big_share} of the {deposit} {sits} below the {surface}",
                "{only_part} of the {deposit} {sits} above the {surface}",
                "the {base} melted {far} under the {deposit}",
                "the {deposit} mixed heavily with the {base}",
                "the melt into the {base} is {deep_pred}",
                "the join between the {deposit} and the {base} is {deep_pred}",
            ),
            colour=(
                "the {green} reaches {far} below the surface inside a deep {red_line}",
                "a deep {red_line} bowl under the {green}",
                "{big_share} of the {green} below the line between the red toes",
                "a {red_line} dipping {far} beneath the {green}",
                "the {green} sunk into the plate within a curved {red_line}",
            ),
            slots=EA1_SLOTS,
        ),
    },
    "EA-2": {
        "positive": Templates(
            phrases=(
                "a {thin} {haz}",
                "a {haz} {under_1mm}",
                "a {haz} that stays close to the {boundary}",
                "{low} {damage} in the {base}",
                "heat that only reached {little_way} into the {base}",
                "{heat_in_low} heat input with a {thin} {haz}",
                "{tiny_share} of the {base} {altered} by the heat",
                "{big_share} of the {base} untouched by the heat",
                "a {thin} {hot_part} just under the {deposit}",
                "the {base} under the {deposit} {nearly} unchanged by heating",
            ),
            clauses=(
                "the heat only reached {little_way} into the {base}",
                "the {haz} is {thin}",
                "{tiny_share} of the {base} was {altered} by the heat",
                "the {base} under the {deposit} is {hardly} {altered} by the heat",
                "{damage} is {confined} to a {thin} layer under the {boundary}",
                "only a {thin} strip of the {base} {got_hot}",
                "the {hot_part} stays {thin} and close to the {deposit}",
                "the {base} is {nearly} unchanged by the heating",
            ),
            colour=(
                "a {thin} {blue_zone} under the {red_line}",
                "only a {thin} {blue_zone} below the {green}",
                "a {blue_zone} that stays close to the {red_line}",
                "{tiny_share} of blue below the {red_line}",
            ),
            slots=EA2_SLOTS,
        ),
        "negative": Templates(
            phrases=(
                "a {thick} {haz}",
                "a {haz} {over_1mm}",
                "a {haz} that {spreads} far from the {boundary}",
                "{high} {damage} in the {base}",
                "heat that reached {far} into the {base}",
                "{heat_in_high} heat input with a {thick} {haz}",
                "{big_share} of the {base} {altered} by the heat",
                "a {thick} {hot_part} reaching {far} into the {base}",
                "{base} that {got_hot} {far} below the {deposit}",
            ),
            clauses=(
                "the heat reached {far} into the {base}",
                "the {haz} is {thick}",
                "{big_share} of the {base} was {altered} by the heat",
                "the {base} under the {deposit} is {strongly} {altered} by the heat",
                "{damage} {spreads} {far} below the {boundary}",
                "{tiny_share} of the {base} under the {deposit} was left untouched by the heat",
                "the {hot_part} runs {far} into the {base}",
                "the {base} {got_hot} {far} below the {deposit}",
                "a {thick} {hot_part} lies under the {deposit}",
            ),
            colour=(
                "a {thick} {blue_zone} reaching {far} below the {red_line}",
                "a {thick} {blue_zone} deep in the plate under the {green}",
                "a {blue_zone} that {spreads} far from the {red_line}",
                "{big_share} of blue below the {red_line}",
            ),
            slots=EA2_SLOTS,
        ),
    },
    "EA-3": {
        "positive": Templates(
            phrases=(
                "a {tall} {mound}",
                "a {deposit} that {stands} {well} above the {surface}",
                "{plenty} {material} above the {surface}",
                "{good} {height}",
                "a crown {over_03}",
                "no sign of a flat or missing {mound}",
                "a {tall} {mound} on the {base}",
            ),
            clauses=(
                "the {deposit} {stands} {well} above the {surface}",
                "the {deposit} forms a {tall} {mound}",
                "there is a {tall} {mound} on the {base}",
                "the {deposit} is {tall_pred}",
                "there is {plenty} {material} above the {surface}",
            ),
            colour=(
                "a {tall} green dome above the {red_line}",
                "a {tall} {green} with {pink} rising above the surface",
                "{plenty} green material above the {red_line}",
                "a high {green} standing over the {red_line}",
            ),
            slots=EA3_SLOTS,
        ),
        "negative": Templates(
            phrases=(
                "a {flat} {mound}",
                "a {deposit} that {hardly} rises above the {surface}",
                "{little} {material} above the {surface}",
                "{poor} {height}",
                "a crown {under_03}",
                "no distinct {mound}",
                "a lot of {material} missing above the {surface}",
            ),
            clauses=(
                "the {deposit} {hardly} rises above the {surface}",
                "the {deposit} forms {no_real} {mound}",
                "there is {little} {material} above the {surface}",
                "the {deposit} is {flat_pred}",
                "no real {mound} stands above the {surface}",
            ),
            colour=(
                "only a thin green strip above the {red_line}",
                "a {flat} {green} barely above the surface",
                "{little} green material above the {red_line}",
                "a thin {green} lying flat on the {red_line}",
            ),
            slots=EA3_SLOTS,
        ),
    },
    "EA-4": {
        "positive": Templates(
            phrases=(
                "{none} {pores}",
                "a {dense} {deposit}",
                "a {deposit} {free_of} {pores}",
                "no {pore} {too_big}",
                "only {small} {pores}, none of them large",
                "{low_porosity} porosity",
                "a {dense} {deposit} with {none} {pores}",
                "many very {small} {pores}, none of them near the size limit",
            ),
            clauses=(
                "the {deposit} is {dense_pred}",
                "there are {none} {pores} in the {deposit}",
                "the {deposit} has {none} {pores}",
                "none of the {pores} is large",
                "{most} of the {deposit} is solid metal",
            ),
            colour=(
                "a {green} {free_of} {dark_spots}",
                "{none} {dark_spots} in the {green}",
                "a {green} with only tiny {dark_spots}",
                "no {dark_spot} of any size in the {green}",
            ),
            slots=EA4_SLOTS,
        ),
        "negative": Templates(
            phrases=(
                "{many} {pores}",
                "a {porous} {deposit}",
                "a {deposit} {full_of} {pores}",
                "{single} {big} {pore}",
                "a {pore} {too_big}",
                "{high_porosity} porosity",
                "a few {big} {pores}",
                "no part of the {deposit} free of {pores}",
                "a {dense} {deposit} except for one {big} {pore}",
            ),
            clauses=(
                "the {deposit} is {porous_pred}",
                "there are {many} {pores} in the {deposit}",
                "one {pore} is {too_big}",
                "the {deposit} is solid apart from {single} {big} {pore}",
                "hardly any of the {deposit} is free of {pores}",
            ),
            colour=(
                "{many} {dark_spots} in the {green}",
                "a {green} {full_of} {dark_spots}",
                "one {big} {dark_spot} in an otherwise clean {green}",
                "a {big} {dark_spot} inside the {green}",
            ),
            slots=EA4_SLOTS,
        ),
    },
    "EA-5": {
        "positive": Templates(
            phrases=(
                "{many} {particles}",
                "a {deposit} {packed} with {particles}",
                "{little} {dissolution}",
                "a carbide {content} {over_30}",
                "{intact} {particles} throughout the {deposit}",
                "{many} {intact} {particles}",
            ),
            clauses=(
                "{most} of the {particles} {survived}",
                "the {deposit} is {packed} with {particles}",
                "{particles} {cover} a {large} part of the {deposit}",
                "{hardly_of} the {particles} {dissolved}",
                "{tiny_share} of the carbide {dissolved}",
            ),
            colour=(
                "a {green} packed with {pink}",
                "{many} {pink} across the {green}",
                "{pink} covering much of the {green}",
                "a dense crowd of {pink} in the {green}",
            ),
            slots=EA5_SLOTS,
        ),
        "negative": Templates(
            phrases=(
                "{few} {particles}",
                "a {deposit} that is mostly {matrix}",
                "{heavy} {dissolution}",
                "a carbide {content} {under_30}",
                "{lost} {particles}",
                "{few} {particles} left in the {deposit}",
            ),
            clauses=(
                "{most} of the {particles} {dissolved}",
                "{particles} {cover} only a {small} part of the {deposit}",
                "the {deposit} is mostly {matrix} with {few} {particles}",
                "{hardly_of} the {particles} {survived}",
                "{big_share} of the carbide {dissolved}",
            ),
            colour=(
                "{few} {pink} in a mostly {green}",
                "a mainly {green} with {few} {pink}",
                "very little pink in the {green}",
                "a {green} with only a handful of {pink}",
            ),
            slots=EA5_SLOTS,
        ),
    },
    "EA-6": {
        "positive": Templates(
            phrases=(
                "{particles} {spread} {evenly} {through} the {deposit}",
                "a {uniform} {distribution} of {particles}",
                "no {clumping} of {particles}",
                "the same {density} of {particles} {everywhere}",
                "{particles} without {bare} {patches}",
            ),
            clauses=(
                "the {particles} are {spread} {evenly} {through} the {deposit}",
                "every part of the {deposit} has about the same {density} of {particles}",
                "there are no {clusters} or {bare} {patches}",
                "the {particles} did not settle or clump",
                "{most} of the {deposit} has the same {density} of {particles}",
            ),
            colour=(
                "{pink} spread {evenly} over the {green}",
                "an even sprinkling of {pink} over the {green}",
                "{pink} dispersed {evenly} from top to bottom of the {green}",
                "evenly spaced {pink} everywhere in the {green}",
            ),
            slots=EA6_SLOTS,
        ),
        "negative": Templates(
            phrases=(
                "{particles} {sunk} {at} the {bottom}",
                "an {uneven} {distribution} of {particles}",
                "{particles} {clustered} into {clusters} with {bare} {patches} between them",
                "a {strong} {gradient} from top to bottom",
                "{strong} {clumping} of {particles}",
            ),
            clauses=(
                "the {particles} {sank} to the {bottom}",
                "the {particles} are {clustered} into {clusters}",
                "the upper part of the {deposit} is {bare} and the {particles} sit low",
                "the {particles} are not {spread} {evenly}",
                "{most} of the {particles} {sank} to the {bottom}",
                "no {particles} left in the upper part of the {deposit}",
            ),
            colour=(
                "{pink} piled at the bottom of the {green}",
                "{pink} bunched into clumps with bare green between them",
                "{pink} concentrated near the {red_line}",
                "dense pink patches and empty green areas in the {green}",
            ),
            slots=EA6_SLOTS,
        ),
    },
}

# Framings carry no polarity, so only the core tells the two apart.
PHRASE_FRAMES = (
    "{}",
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
    "an additively manufactured bead exhibiting {}",
    "an image of {}",
    "there is {}",
    "a sample with {}",
)
CLAUSE_FRAMES = (
    "{}",
    "{}",
    "in this cross-section {}",
    "the micrograph shows that {}",
    "here {}",
    "on this sample {}",
    "the section shows {}",
    "it looks like {}",
    "inspection: {}",
    "in this weld {}",
)

# How many captions each template contributes at most (its slot combinations are sampled).
PER_TEMPLATE = 60
PER_COLOUR_TEMPLATE = 40


@dataclass(frozen=True)
class Caption:
    assessment: str
    polarity: str
    text: str
    colour: bool  # names phase colours
    plain: bool  # no metallurgical term (JARGON)


def caption_bank() -> list[Caption]:
    """Every training caption, the same list on every call and every machine."""
    bank: dict[str, Caption] = {}
    for key in ASSESSMENTS:
        for polarity in POLARITIES:
            templates = TEMPLATES[key][polarity]
            slots = {**SHARED, **templates.slots}
            groups = (
                (templates.phrases, PHRASE_FRAMES, PER_TEMPLATE),
                (templates.clauses, CLAUSE_FRAMES, PER_TEMPLATE),
                (templates.colour, PHRASE_FRAMES, PER_COLOUR_TEMPLATE),
            )
            for group, frames, limit in groups:
                for template in group:
                    for core, text in _expand(template, slots, frames, limit):
                        caption = Caption(key, polarity, text, names_a_colour(core),
                                          is_plain(core))
                        bank.setdefault(normalise(text), caption)
    return list(bank.values())


def _expand(template: str, slots: Mapping[str, tuple[str, ...]], frames: tuple[str, ...],
            limit: int) -> Iterable[tuple[str, str]]:
    """Up to `limit` (core, caption) fillings of the template, each caption the core in a
    framing; the choices come from a seed fixed by the template's text."""
    names = re.findall(r"{(\w+)}", template)
    unknown = [n for n in names if n not in slots]
    if unknown:
        raise KeyError(f"template {template!r} names unknown slots {unknown}")
    choices = list(itertools.product(*(slots[n] for n in names)))
    rng = random.Random(zlib.crc32(template.encode()))
    rng.shuffle(choices)
    for words in choices[:limit]:
        core = template.format(**dict(zip(names, words, strict=True)))
        text = _articles(rng.choice(frames).format(core))
        yield core, text + "." if rng.random() < 0.3 else text


def _articles(text: str) -> str:
    """'a' before a vowel sound becomes 'an' (an oversized pore, a uniform spread)."""
    return re.sub(r"\ba (?=(?:[aei]|o(?!ne\b)|u(?!ni|s[eu]))\w)", "an ", text)


def normalise(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: how captions are compared."""
    return re.sub(r"\s+", " ", text.lower()).strip(" .;:")


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z][a-z-]*", text.lower()))


def names_a_colour(text: str) -> bool:
    return bool(_words(text) & set(COLOUR_WORDS))


def is_plain(text: str) -> bool:
    """True when the text uses no metallurgical term and no colour (everyday words)."""
    return not (_words(text) & set(JARGON)) and not names_a_colour(text)
