-- Read models. Every row here is derived from the event store by the projector, which
-- writes it in the same transaction as its checkpoint; `replay` truncates these tables
-- and rebuilds them.

CREATE TABLE rm_health_checks
(
    health_check_id text PRIMARY KEY,
    service_name    text NOT NULL,
    payload         text NOT NULL
);

-- One row per run, for uptime over a window.
CREATE TABLE rm_health_results
(
    health_check_id text   NOT NULL,
    sequence        integer NOT NULL,
    checked_at_ms   integer NOT NULL,
    up              integer NOT NULL,
    PRIMARY KEY (health_check_id, sequence)
);
CREATE INDEX rm_health_results_time ON rm_health_results (health_check_id, checked_at_ms);

CREATE TABLE rm_traces
(
    trace_id      text PRIMARY KEY,
    service_name  text   NOT NULL,
    start_time_ms integer NOT NULL,
    payload       text   NOT NULL
);
CREATE INDEX rm_traces_service ON rm_traces (service_name, start_time_ms);
CREATE INDEX rm_traces_time ON rm_traces (start_time_ms);

CREATE TABLE rm_metric_batches
(
    metrics_id     text PRIMARY KEY,
    service_name   text   NOT NULL,
    recorded_at_ms integer NOT NULL,
    payload        text   NOT NULL
);
CREATE INDEX rm_metric_batches_service ON rm_metric_batches (service_name, recorded_at_ms);

-- One row per recorded operation (POST /v1/performance).
CREATE TABLE rm_performance_samples
(
    metrics_id     text PRIMARY KEY,
    service_name   text             NOT NULL,
    operation_name text             NOT NULL,
    recorded_at_ms integer           NOT NULL,
    duration_ms    real NOT NULL,
    success        integer           NOT NULL
);
CREATE INDEX rm_performance_samples_time ON rm_performance_samples (service_name, recorded_at_ms);
