//! HOT templates: parse, check a plan against one, and rewrite primary-site volume IDs into
//! the IDs Cinder gave the imported volumes.
//!
//! The rewrite never adds resources (a new `OS::Cinder::Volume` would be empty): a volume whose
//! plan entry names a `parameter` (or whose ID is a parameter's `default`) is passed as a stack
//! parameter; every other occurrence of a primary ID in the template's strings is replaced by
//! value. What is left that still looks like a volume ID in a volume property is refused with
//! its path: Heat would fail later with a less clear message.

use std::collections::BTreeMap;

use serde_json::Value;

use super::OrchError;

/// A parsed template (HOT is YAML; JSON is YAML too).
#[derive(Clone, Debug)]
pub struct Template {
    pub doc: Value,
}

/// What [`Template::rewrite`] made.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewritten {
    pub template: Value,
    pub parameters: BTreeMap<String, String>,
    /// (primary ID, new ID, where: "parameter NAME" or the JSON paths replaced by value).
    pub replaced: Vec<(String, String, String)>,
}

/// One volume's mapping.
#[derive(Clone, Debug)]
pub struct Mapping<'a> {
    pub resource: &'a str,
    pub primary_id: Option<&'a str>,
    pub parameter: Option<&'a str>,
    pub new_id: &'a str,
}

impl Template {
    pub fn parse(text: &str, what: &str) -> Result<Template, OrchError> {
        let doc: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| OrchError::Template(format!("{what}: not YAML: {e}")))?;
        if doc.get("heat_template_version").is_none() {
            return Err(OrchError::Template(format!(
                "{what}: no heat_template_version: not a HOT template"
            )));
        }
        if !doc.get("resources").is_some_and(Value::is_object) {
            return Err(OrchError::Template(format!("{what}: no resources section")));
        }
        Ok(Template { doc })
    }

    fn parameter_declared(&self, name: &str) -> bool {
        self.doc.pointer(&format!("/parameters/{name}")).is_some()
    }

    /// The parameter whose default is `id`, if any.
    fn parameter_with_default(&self, id: &str) -> Option<String> {
        self.doc
            .get("parameters")
            .and_then(Value::as_object)?
            .iter()
            .find(|(_, p)| p.get("default").and_then(Value::as_str) == Some(id))
            .map(|(n, _)| n.clone())
    }

    /// Check that every volume of a plan can be found in the template (protect time).
    pub fn check(&self, vols: &[(&str, Option<&str>, Option<&str>)]) -> Result<(), OrchError> {
        for (res, id, param) in vols {
            if let Some(p) = param {
                if !self.parameter_declared(p) {
                    return Err(OrchError::Template(format!(
                        "{res}: the template declares no parameter {p:?}"
                    )));
                }
                continue;
            }
            if let Some(id) = id {
                let mut n = 0;
                count(&self.doc, id, &mut n);
                if n == 0 {
                    return Err(OrchError::Template(format!(
                        "{res}: primary-id {id} does not appear in the template"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Replace the primary IDs by the new ones (see the module doc).
    pub fn rewrite(&self, maps: &[Mapping<'_>]) -> Result<Rewritten, OrchError> {
        let mut doc = self.doc.clone();
        let mut parameters = BTreeMap::new();
        let mut replaced = Vec::new();
        for m in maps {
            let param = m
                .parameter
                .map(str::to_owned)
                .or_else(|| m.primary_id.and_then(|id| self.parameter_with_default(id)));
            if let Some(p) = param {
                if !self.parameter_declared(&p) {
                    return Err(OrchError::Template(format!(
                        "{}: the template declares no parameter {p:?}",
                        m.resource
                    )));
                }
                parameters.insert(p.clone(), m.new_id.to_owned());
                replaced.push((
                    m.primary_id.unwrap_or("").to_owned(),
                    m.new_id.to_owned(),
                    format!("parameter {p}"),
                ));
            }
            let Some(old) = m.primary_id else { continue };
            // By value in resources and outputs (parameter defaults stay: the parameter wins).
            let mut paths = Vec::new();
            for section in ["resources", "outputs"] {
                if let Some(v) = doc.get_mut(section) {
                    replace(v, old, m.new_id, &mut format!("/{section}"), &mut paths);
                }
            }
            if !paths.is_empty() {
                replaced.push((old.to_owned(), m.new_id.to_owned(), paths.join(", ")));
            }
        }
        let new_ids: Vec<&str> = maps.iter().map(|m| m.new_id).collect();
        if let Some(r) = doc.get("resources") {
            let mut bad = Vec::new();
            unknown_volume_ids(r, "/resources", &new_ids, &mut bad);
            if let Some((path, id)) = bad.into_iter().next() {
                return Err(OrchError::Template(format!(
                    "the template references volume ID {id} at {path}, which the plan does not protect (add it to [plan.volume.RES] primary-id, or fix the template)"
                )));
            }
        }
        Ok(Rewritten {
            template: doc,
            parameters,
            replaced,
        })
    }
}

fn count(v: &Value, needle: &str, n: &mut usize) {
    match v {
        Value::String(s) if s.contains(needle) => *n += 1,
        Value::Array(a) => a.iter().for_each(|x| count(x, needle, n)),
        Value::Object(o) => o.values().for_each(|x| count(x, needle, n)),
        _ => {}
    }
}

fn replace(v: &mut Value, old: &str, new: &str, path: &mut String, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.contains(old) => {
            *s = s.replace(old, new);
            out.push(path.clone());
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                replace(x, old, new, path, out);
                path.truncate(len);
            }
        }
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                let len = path.len();
                path.push('/');
                path.push_str(k);
                replace(x, old, new, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Property names that hold a Cinder volume ID in Heat's resource types.
const VOLUME_KEYS: [&str; 3] = ["volume_id", "volume", "boot_volume"];

fn looks_like_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn unknown_volume_ids(v: &Value, path: &str, known: &[&str], out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{path}/{k}");
                if let Value::String(s) = x {
                    if VOLUME_KEYS.contains(&k.as_str())
                        && looks_like_uuid(s)
                        && !known.contains(&s.as_str())
                    {
                        out.push((p.clone(), s.clone()));
                    }
                }
                unknown_volume_ids(x, &p, known, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                unknown_volume_ids(x, &format!("{path}/{i}"), known, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD0: &str = "0e5b7c8e-0d7e-4c39-9d6f-5a1f2b7c1a10";
    const OLD1: &str = "1e5b7c8e-0d7e-4c39-9d6f-5a1f2b7c1a11";
    const NEW0: &str = "aaaaaaaa-0000-4000-8000-000000000000";
    const NEW1: &str = "bbbbbbbb-0000-4000-8000-000000000000";

    fn tpl() -> Template {
        Template::parse(
            &format!(
                "heat_template_version: 2018-08-31\nparameters:\n  boot: {{type: string, default: {OLD0}}}\nresources:\n  srv:\n    type: OS::Nova::Server\n    properties:\n      block_device_mapping_v2: [{{volume_id: {{get_param: boot}}, boot_index: 0}}]\n  att:\n    type: OS::Cinder::VolumeAttachment\n    properties: {{instance_uuid: {{get_resource: srv}}, volume_id: {OLD1}}}\n"
            ),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn parameters_where_declared_values_elsewhere() {
        let t = tpl();
        t.check(&[("r0", Some(OLD0), None), ("r1", Some(OLD1), None)])
            .unwrap();
        let r = t
            .rewrite(&[
                Mapping {
                    resource: "r0",
                    primary_id: Some(OLD0),
                    parameter: None,
                    new_id: NEW0,
                },
                Mapping {
                    resource: "r1",
                    primary_id: Some(OLD1),
                    parameter: None,
                    new_id: NEW1,
                },
            ])
            .unwrap();
        assert_eq!(r.parameters.get("boot").map(String::as_str), Some(NEW0));
        assert_eq!(
            r.template.pointer("/resources/att/properties/volume_id"),
            Some(&Value::String(NEW1.into()))
        );
        // No resource was added.
        assert_eq!(r.template["resources"].as_object().unwrap().len(), 2);
        assert!(!r.template.to_string().contains(OLD1));
    }

    #[test]
    fn unknown_ids_and_missing_ids_refused() {
        let t = tpl();
        let e = t
            .rewrite(&[Mapping {
                resource: "r0",
                primary_id: Some(OLD0),
                parameter: None,
                new_id: NEW0,
            }])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(OLD1) && e.contains("/resources/att/properties/volume_id"),
            "{e}"
        );
        let e = t
            .check(&[("r2", Some("2e5b7c8e-0d7e-4c39-9d6f-5a1f2b7c1a12"), None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not appear"), "{e}");
        let e = t
            .check(&[("r0", None, Some("nope"))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no parameter \"nope\""), "{e}");
        assert!(Template::parse("a: [", "x").is_err());
        assert!(Template::parse("resources: {}", "x")
            .unwrap_err()
            .to_string()
            .contains("heat_template_version"));
    }
}
