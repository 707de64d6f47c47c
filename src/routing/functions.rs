//! The read-only function allow-list: which function calls a statement may
//! make and still run on a replica.
//!
//! Why an allow-list and not a deny-list: a replica refuses anything that
//! writes (SQLSTATE 25006), but it happily runs things whose *effect* is
//! wrong there — a sequence value, a lock or a notification taken on the
//! replica is invisible to the primary and to the session's next server. A
//! user-defined function can do anything, so every function not known here
//! sends the statement to the primary. We are generous with built-ins that
//! are genuinely read-only (immutable, stable, and volatile-but-harmless
//! ones like `random()` or `pg_sleep()`), because a read that is needlessly
//! sent to the primary defeats the proxy's purpose.
//!
//! Denied even though some are STABLE: the sequence functions (`nextval`,
//! `setval`, `currval`, `lastval`: session-local sequence state must stay
//! where the session's writes go), `pg_advisory_*` locks, `set_config`,
//! `setseed`, `txid_current`/`pg_current_xact_id` (assign a transaction id),
//! `pg_notify`, large objects (`lo_*`), and server administration functions.

use super::types::{PinReason, Unpin};
use std::collections::HashSet;

/// Built-in functions safe on a replica, matched exactly (unqualified or
/// `pg_catalog.`-qualified).
#[rustfmt::skip]
const READ_ONLY: &[&str] = &[
    // aggregates and window functions
    "count", "sum", "avg", "min", "max", "every", "any_value", "mode", "grouping", "rank",
    "dense_rank", "percent_rank", "cume_dist", "ntile", "row_number", "lag", "lead", "first_value",
    "last_value", "nth_value", "corr", "variance", "stddev", "xmlagg",
    // conditionals and comparison
    "coalesce", "nullif", "greatest", "least", "num_nulls", "num_nonnulls",
    // math
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "exp", "ln",
    "log", "log10", "power", "pow", "mod", "div", "pi", "degrees", "radians", "random",
    "random_normal", "gcd", "lcm", "factorial", "width_bucket", "scale", "min_scale", "trim_scale",
    "sin", "cos", "tan", "cot", "asin", "acos", "atan", "atan2", "sind", "cosd", "tand", "cotd",
    "asind", "acosd", "atand", "atan2d", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "erf",
    "erfc", "gamma", "lgamma",
    // strings
    "lower", "upper", "initcap", "length", "char_length", "character_length", "octet_length",
    "bit_length", "concat", "concat_ws", "substr", "substring", "left", "right", "lpad", "rpad",
    "ltrim", "rtrim", "btrim", "trim", "replace", "reverse", "repeat", "split_part", "strpos",
    "position", "starts_with", "ascii", "chr", "md5", "sha224", "sha256", "sha384", "sha512",
    "crc32", "crc32c", "encode", "decode", "format", "quote_ident", "quote_literal",
    "quote_nullable", "translate", "overlay", "unistr", "normalize", "casefold", "convert",
    "convert_from", "convert_to", "parse_ident", "like_escape", "similar_to_escape",
    "similar_escape", "text", "varchar", "bpchar", "char", "name",
    // date and time
    "now", "current_timestamp", "current_date", "current_time", "localtime", "localtimestamp",
    "clock_timestamp", "statement_timestamp", "transaction_timestamp", "timeofday", "age",
    "extract", "isfinite", "justify_days", "justify_hours", "justify_interval", "timezone",
    "overlaps", "date", "time", "timestamp", "timestamptz", "interval",
    // types, casts, ranges, network, uuid
    "int2", "int4", "int8", "float4", "float8", "numeric", "bool", "uuid", "inet", "cidr",
    "int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange", "lower_inf",
    "upper_inf", "lower_inc", "upper_inc", "isempty", "host", "hostmask", "masklen", "netmask",
    "network", "broadcast", "family", "abbrev", "inet_merge", "inet_same_family", "set_masklen",
    "gen_random_uuid", "uuidv4", "uuidv7", "uuid_extract_timestamp", "uuid_extract_version",
    "unnest", "cardinality", "generate_series", "generate_subscripts", "row_to_json", "xmlelement",
    "xmlforest", "xmlconcat", "xpath", "xpath_exists", "xml_is_well_formed", "num_nulls",
    // text search
    "plainto_tsquery", "phraseto_tsquery", "websearch_to_tsquery", "setweight", "strip", "numnode",
    "querytree", "tsvector_to_array",
    // session and server information (read-only)
    "version", "current_user", "session_user", "user", "current_role", "current_schema",
    "current_schemas", "current_database", "current_catalog", "current_setting", "current_query",
    "inet_client_addr", "inet_client_port", "inet_server_addr", "inet_server_port",
    "pg_backend_pid", "pg_postmaster_start_time", "pg_conf_load_time", "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn", "pg_last_xact_replay_timestamp", "pg_wal_lsn_diff",
    "pg_my_temp_schema", "pg_jit_available", "pg_listening_channels",
    "pg_notification_queue_usage", "pg_blocking_pids", "pg_safe_snapshot_blocking_pids",
    "pg_trigger_depth", "pg_typeof", "pg_sleep", "pg_sleep_for", "pg_sleep_until",
    "obj_description", "col_description", "shobj_description", "format_type", "pg_database_size",
    "pg_tablespace_size", "pg_client_encoding", "getdatabaseencoding", "pg_current_snapshot",
    "pg_snapshot_xmin", "pg_snapshot_xmax", "pg_snapshot_xip", "txid_current_snapshot",
    "txid_snapshot_xmin", "txid_snapshot_xmax", "txid_snapshot_xip", "pg_describe_object",
    "pg_identify_object", "pg_identify_object_as_address", "pg_options_to_table",
    "pg_tablespace_location", "pg_settings_get_flags", "pg_input_is_valid", "pg_input_error_info",
    "pg_collation_is_visible", "pg_table_is_visible", "pg_type_is_visible",
    "pg_function_is_visible",
];

/// Families of built-ins that are read-only as a whole.
#[rustfmt::skip]
const READ_ONLY_PREFIXES: &[&str] = &[
    "json_", "jsonb_", "array_", "regexp_", "to_", "string_", "date_", "make_", "ts_", "range_",
    "percentile_", "regr_", "stddev_", "var_", "covar_", "bit_", "bool_", "has_", "pg_get_",
    "pg_is_", "pg_size_", "pg_relation_", "pg_table_", "pg_total_", "pg_indexes_", "pg_column_",
    "pg_encoding_", "pg_has_", "xml", "websearch_", "phraseto_", "plainto_",
];

/// Never read-only, checked before everything else (also beats the
/// configured extras: these are correctness rules, not preferences).
#[rustfmt::skip]
const DENIED: &[&str] = &[
    "nextval", "setval", "currval", "lastval", "set_config", "setseed", "txid_current",
    "txid_current_if_assigned", "pg_current_xact_id", "pg_current_xact_id_if_assigned",
    "pg_notify", "pg_cancel_backend", "pg_terminate_backend", "pg_reload_conf",
    "pg_rotate_logfile", "pg_switch_wal", "pg_create_restore_point", "pg_promote",
    "pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup", "pg_export_snapshot",
    "pg_import_system_collations", "pg_log_backend_memory_contexts",
];

#[rustfmt::skip]
const DENIED_PREFIXES: &[&str] = &[
    "pg_advisory_", "pg_try_advisory_", "lo_", "pg_stat_reset", "pg_create_", "pg_drop_",
    "pg_replication_", "pg_logical_", "pg_wal_replay_", "pg_current_wal", "pg_copy_", "pg_file_",
    "pg_sequence_", "binary_upgrade_", "pg_set_", "pg_clear_", "pg_restore_", "pg_sync_",
];

/// A built-in this module lists (read-only or denied, by name or family).
/// Functions configured in `routing.read_only_functions` are not: they are
/// the user's own code, declared safe on a replica but free to change the
/// session (`set_config(…, false)`).
fn is_builtin(name: &str) -> bool {
    READ_ONLY.contains(&name)
        || READ_ONLY_PREFIXES.iter().any(|p| name.starts_with(p))
        || DENIED.contains(&name)
        || DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// What calling one function means for routing.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct FnEffect {
    pub read_only: bool,
    pub pin: Option<PinReason>,
    pub unpin: Option<Unpin>,
    /// `set_config(...)`: a literal-dependent session change.
    pub set_config: bool,
    /// Not a built-in this module knows: user code, which may change the
    /// session in ways the statement's text does not show.
    pub opaque: bool,
}

/// The allow-list plus the names configured in `routing.read_only_functions`.
#[derive(Clone, Debug, Default)]
pub(crate) struct FunctionPolicy {
    extra: HashSet<String>,
}

impl FunctionPolicy {
    /// `extra` are matched case-insensitively, either bare (`my_func`) or
    /// schema-qualified (`app.my_func`, which then only matches that call).
    pub(crate) fn new(extra: &[String]) -> Self {
        Self {
            extra: extra
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Classifies a call by its name parts, already folded as the server
    /// folds them (unquoted lower-cased, quoted verbatim).
    pub(crate) fn effect(&self, parts: &[String]) -> FnEffect {
        let bare = match parts {
            [name] => Some(name.as_str()),
            [schema, name] if schema == "pg_catalog" => Some(name.as_str()),
            _ => None,
        };
        let Some(name) = bare else {
            let full = parts.join(".");
            return FnEffect {
                read_only: self.extra.contains(&full),
                opaque: true,
                ..FnEffect::default()
            };
        };
        let mut effect = FnEffect {
            read_only: self.is_read_only(name),
            opaque: !is_builtin(name),
            ..FnEffect::default()
        };
        if name == "set_config" {
            effect.set_config = true;
        } else if name == "pg_advisory_unlock_all" {
            effect.unpin = Some(Unpin::AdvisoryUnlockAll);
        } else if (name.starts_with("pg_advisory_lock") || name.starts_with("pg_try_advisory_lock"))
            && !name.contains("_xact_")
        {
            effect.pin = Some(PinReason::AdvisoryLock);
        }
        effect
    }

    fn is_read_only(&self, name: &str) -> bool {
        if DENIED.contains(&name) || DENIED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return false;
        }
        self.extra.contains(name)
            || READ_ONLY.contains(&name)
            || READ_ONLY_PREFIXES.iter().any(|p| name.starts_with(p))
    }
}
