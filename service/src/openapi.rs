//! Keeping a hand-written OpenAPI document true: each API's tests call [`check`] with the
//! paths its router serves.

/// `Ok` when `document` is OpenAPI 3.1, documents exactly the `served` paths, and every
/// `$ref` in it resolves; otherwise what is wrong.
pub fn check(document: &str, served: &[&str]) -> Result<(), String> {
    let document: serde_json::Value =
        serde_json::from_str(document).map_err(|error| format!("not JSON: {error}"))?;
    if document["openapi"] != "3.1.0" {
        return Err(format!("openapi is {}, not 3.1.0", document["openapi"]));
    }
    let mut documented: Vec<&str> = document["paths"]
        .as_object()
        .ok_or("no paths")?
        .keys()
        .map(String::as_str)
        .collect();
    let mut served = served.to_vec();
    documented.sort_unstable();
    served.sort_unstable();
    if documented != served {
        return Err(format!("documented {documented:?}, served {served:?}"));
    }
    let mut found = Vec::new();
    refs(&document, &mut found);
    for target in found {
        let resolves = target
            .strip_prefix('#')
            .is_some_and(|pointer| document.pointer(pointer).is_some());
        if !resolves {
            return Err(format!("{target} does not resolve"));
        }
    }
    Ok(())
}

fn refs<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                found.push(target);
            }
            map.values().for_each(|v| refs(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_too_many_or_too_few_and_a_dangling_ref_are_told() {
        let document = r##"{"openapi": "3.1.0", "paths": {"/a": {"$ref": "#/components/x"}},
                            "components": {"x": {}}}"##;
        assert_eq!(check(document, &["/a"]), Ok(()));
        assert!(check(document, &["/a", "/b"]).is_err());
        assert!(check(document, &[]).is_err());
        let dangling = document.replace("#/components/x", "#/components/y");
        assert!(
            check(&dangling, &["/a"])
                .unwrap_err()
                .contains("#/components/y")
        );
    }
}
