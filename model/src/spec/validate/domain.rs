//! Validation of `[[domain]]` tables.

use std::collections::HashSet;

use super::{Validator, is_identifier, is_topic_name};
use crate::duration::Millis;
use crate::spec::raw::{RawDomain, S};
use crate::spec::{DEFAULT_ID_LENGTH, DEFAULT_MAX_FUTURE, DEFAULT_TEXT_LENGTH, Domain, EVENT_ID, Field, FieldType, RESERVED_RAW_COLUMNS};

impl Validator {
    pub(super) fn domain(&mut self, raw: &RawDomain) -> Option<Domain> {
        let name = raw.name.get_ref().clone();
        let before = self.errors.len();
        if !is_identifier(&name) {
            self.err(&raw.name, format!("domain name `{name}` must be a lowercase identifier ([a-z_][a-z0-9_]*)"));
        }
        if !is_topic_name(raw.topic.get_ref()) {
            self.err(&raw.topic, format!("domain `{name}`: `{}` is not a valid Kafka topic name", raw.topic.get_ref()));
        }
        let partitions = match &raw.partitions {
            None => 1,
            Some(p) if (1..=10_000).contains(p.get_ref()) => *p.get_ref() as i32,
            Some(p) => {
                self.err(p, format!("domain `{name}`: partitions must be between 1 and 10000"));
                1
            }
        };
        let replication = match &raw.replication {
            None => 1,
            Some(r) if (1..=16).contains(r.get_ref()) => *r.get_ref() as i32,
            Some(r) => {
                self.err(r, format!("domain `{name}`: replication must be between 1 and 16"));
                1
            }
        };
        let retention = self.opt_duration(&raw.retention, &format!("domain `{name}`: retention"), Millis(7 * 86_400_000));
        let cleanup_policy = match &raw.cleanup_policy {
            None => "delete".to_string(),
            Some(c) => {
                let v = c.get_ref().replace(' ', "");
                if !matches!(v.as_str(), "delete" | "compact" | "compact,delete" | "delete,compact") {
                    self.err(c, format!("domain `{name}`: cleanup_policy `{}` must be delete, compact or compact,delete", c.get_ref()));
                }
                v
            }
        };
        let compression = match &raw.compression {
            None => "lz4".to_string(),
            Some(c) => {
                if !matches!(c.get_ref().as_str(), "none" | "gzip" | "snappy" | "lz4" | "zstd" | "producer") {
                    self.err(c, format!("domain `{name}`: compression `{}` must be one of none, gzip, snappy, lz4, zstd, producer", c.get_ref()));
                }
                c.get_ref().clone()
            }
        };

        let mut fields = Vec::new();
        let mut seen = HashSet::new();
        for f in &raw.fields {
            let f = f.get_ref();
            let fname = f.name.get_ref().clone();
            if !is_identifier(&fname) {
                self.err(&f.name, format!("domain `{name}`: field name `{fname}` must be a lowercase identifier"));
            }
            if !seen.insert(fname.clone()) {
                self.err(&f.name, format!("domain `{name}`: duplicate field `{fname}`"));
            }
            if RESERVED_RAW_COLUMNS.contains(&fname.as_str()) || fname.starts_with('_') {
                self.err(&f.name, format!("domain `{name}`: field name `{fname}` is reserved"));
            }
            let ty = match f.ty.get_ref().as_str() {
                "string" => FieldType::String,
                "enum" => FieldType::Enum(Vec::new()),
                "int" => FieldType::Int,
                "float" => FieldType::Float,
                "bool" => FieldType::Bool,
                "timestamp" => FieldType::Timestamp,
                "point" => FieldType::Point,
                other => {
                    self.err(&f.ty, format!("domain `{name}`: field `{fname}` has unknown type `{other}` (string, enum, int, float, bool, timestamp, point)"));
                    continue;
                }
            };
            let ty = match (ty, &f.values) {
                (FieldType::Enum(_), Some(values)) => {
                    let vals = values.get_ref();
                    let unique: HashSet<&String> = vals.iter().collect();
                    if vals.is_empty() || vals.len() > 255 {
                        self.err(values, format!("domain `{name}`: enum field `{fname}` needs between 1 and 255 values"));
                    } else if unique.len() != vals.len() {
                        self.err(values, format!("domain `{name}`: enum field `{fname}` has duplicate values"));
                    }
                    FieldType::Enum(vals.clone())
                }
                (FieldType::Enum(_), None) => {
                    self.err(&f.ty, format!("domain `{name}`: enum field `{fname}` needs `values = [...]`"));
                    continue;
                }
                (ty, Some(values)) => {
                    self.err(values, format!("domain `{name}`: field `{fname}` of type {} cannot have `values` (only enum fields can)", ty.name()));
                    ty
                }
                (ty, None) => ty,
            };
            if f.dimension && !matches!(ty, FieldType::String | FieldType::Enum(_)) {
                self.err(&f.name, format!("domain `{name}`: field `{fname}` of type {} cannot be a dimension (only string and enum fields can)", ty.name()));
            }
            for bound in [&f.min, &f.max].into_iter().flatten() {
                if !ty.is_numeric() {
                    self.err(bound, format!("domain `{name}`: field `{fname}` of type {} cannot have `min`/`max` (only int and float fields can)", ty.name()));
                } else if !bound.get_ref().is_finite() {
                    self.err(bound, format!("domain `{name}`: field `{fname}`: `min`/`max` must be finite numbers"));
                }
            }
            if let (Some(lo), Some(hi)) = (&f.min, &f.max)
                && lo.get_ref() > hi.get_ref()
            {
                self.err(hi, format!("domain `{name}`: field `{fname}`: `max` {} is below `min` {}", hi.get_ref(), lo.get_ref()));
            }
            let is_identity = fname == *raw.key.get_ref() || fname == EVENT_ID;
            let default_length = if f.dimension || is_identity { DEFAULT_ID_LENGTH } else { DEFAULT_TEXT_LENGTH };
            let max_length = match &f.max_length {
                None => default_length,
                Some(l) if !matches!(ty, FieldType::String) => {
                    self.err(l, format!("domain `{name}`: field `{fname}` of type {} cannot have `max_length` (only string fields can)", ty.name()));
                    default_length
                }
                Some(l) if (1..=1_048_576).contains(l.get_ref()) => *l.get_ref() as usize,
                Some(l) => {
                    self.err(l, format!("domain `{name}`: field `{fname}`: `max_length` must be between 1 and 1048576 bytes"));
                    default_length
                }
            };
            fields.push(Field {
                name: fname,
                ty,
                optional: f.optional,
                dimension: f.dimension,
                min: f.min.as_ref().map(|v| *v.get_ref()),
                max: f.max.as_ref().map(|v| *v.get_ref()),
                max_length,
            });
        }

        let find = |field: &S<String>| fields.iter().position(|f| &f.name == field.get_ref());
        let key = find(&raw.key);
        match key {
            None => self.err(&raw.key, format!("domain `{name}`: key `{}` is not a field of the domain", raw.key.get_ref())),
            Some(k) => {
                let f = &fields[k];
                if !matches!(f.ty, FieldType::String | FieldType::Enum(_) | FieldType::Int) || f.optional {
                    self.err(&raw.key, format!("domain `{name}`: key `{}` must be a required string or int field", f.name));
                }
            }
        }
        if raw.mutable && raw.key.get_ref() != EVENT_ID {
            self.err(&raw.key, format!("domain `{name}`: a mutable domain is keyed by `{EVENT_ID}` (updates and deletes address events by id)"));
        }
        let time_field = find(&raw.time_field);
        match time_field {
            None => self.err(&raw.time_field, format!("domain `{name}`: time_field `{}` is not a field of the domain", raw.time_field.get_ref())),
            Some(t) => {
                let f = &fields[t];
                if f.ty != FieldType::Timestamp || f.optional {
                    self.err(&raw.time_field, format!("domain `{name}`: time_field `{}` must be a required timestamp field", f.name));
                }
            }
        }
        if let Some(i) = fields.iter().position(|f| f.name == EVENT_ID)
            && fields[i].ty != FieldType::String
        {
            self.err(&raw.name, format!("domain `{name}`: field `{EVENT_ID}` must be a string"));
        }
        let max_future = self.opt_duration(&raw.max_future, &format!("domain `{name}`: max_future"), DEFAULT_MAX_FUTURE);
        let max_age = self.opt_duration(&raw.max_age, &format!("domain `{name}`: max_age"), retention);
        if let Some(a) = &raw.max_age
            && max_age.ms() <= 0
        {
            self.err(a, format!("domain `{name}`: max_age must be greater than 0"));
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Domain {
            name,
            topic: raw.topic.get_ref().clone(),
            partitions,
            replication,
            retention,
            cleanup_policy,
            compression,
            key: key?,
            time_field: time_field?,
            mutable: raw.mutable,
            fields,
            max_future,
            max_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::duration::Millis;
    use crate::spec::testing::assert_error;
    use crate::spec::{DEFAULT_ID_LENGTH, DEFAULT_MAX_FUTURE, DEFAULT_TEXT_LENGTH, Spec};

    #[test]
    fn domain_errors() {
        let text = "\n[[domain]]\nname = \"Bad Name\"\ntopic = \"t2\"\nkey = \"nope\"\ntime_field = \"k\"\nfields = [{ name = \"k\", type = \"strin\" }]\n";
        assert_error(text, 16, "must be a lowercase identifier");
        assert_error(text, 20, "unknown type `strin`");
        assert_error(text, 18, "key `nope` is not a field");
    }

    #[test]
    fn trust_boundary_keys() {
        let domain = |fields: &str, extra: &str| {
            format!(
                "[[domain]]\nname = \"d\"\ntopic = \"t\"\nkey = \"id\"\ntime_field = \"ts\"\n{extra}fields = [\n  {{ name = \"id\", type = \"string\" }},\n  {{ name = \"ts\", type = \"timestamp\" }},\n{fields}]\n"
            )
        };
        let errs = |text: String| match Spec::parse(Path::new("t.toml"), &text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| format!("{}:{}", e.line, e.message)).collect::<Vec<_>>(),
        };
        let ok = Spec::parse(Path::new("t.toml"), &domain("  { name = \"fare\", type = \"float\", min = 0, max = 10.5 },\n  { name = \"city\", type = \"string\", dimension = true, max_length = 64 },\n  { name = \"note\", type = \"string\" },\n", "max_future = \"1m\"\nmax_age = \"2d\"\n")).expect("valid");
        let d = &ok.domains[0];
        assert_eq!((d.max_future, d.max_age), (Millis(60_000), Millis(2 * 86_400_000)));
        assert_eq!((d.fields[2].min, d.fields[2].max), (Some(0.0), Some(10.5)));
        assert_eq!((d.fields[0].max_length, d.fields[3].max_length, d.fields[4].max_length), (DEFAULT_ID_LENGTH, 64, DEFAULT_TEXT_LENGTH));
        let defaults = Spec::parse(Path::new("t.toml"), &domain("", "retention = \"3d\"\n")).expect("valid");
        assert_eq!((defaults.domains[0].max_future, defaults.domains[0].max_age), (DEFAULT_MAX_FUTURE, Millis(3 * 86_400_000)));
        let e = errs(domain("  { name = \"s\", type = \"string\", min = 1 },\n", ""));
        assert!(e.iter().any(|e| e.starts_with("9:") && e.contains("cannot have `min`/`max`")), "{e:?}");
        let e = errs(domain("  { name = \"x\", type = \"int\", min = 5, max = 1 },\n", ""));
        assert!(e.iter().any(|e| e.contains("`max` 1 is below `min` 5")), "{e:?}");
        let e = errs(domain("  { name = \"x\", type = \"int\", max_length = 5 },\n", ""));
        assert!(e.iter().any(|e| e.contains("cannot have `max_length`")), "{e:?}");
        let e = errs(domain("", "max_future = \"soon\"\n"));
        assert!(e.iter().any(|e| e.starts_with("6:") && e.contains("max_future")), "{e:?}");
        let e = errs(format!(
            "{}\n[[metric]]\nname = \"m\"\ndomain = \"d\"\nwindow = \"1m\"\nmax_groups = 0\naggregates = [{{ name = \"n\", fn = \"count\" }}]\n",
            domain("", "")
        ));
        assert!(e.iter().any(|e| e.contains("max_groups must be between")), "{e:?}");
    }
}
