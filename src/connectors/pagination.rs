//! Pagination: a list operation's pages followed by cursor, offset or
//! page number, as its catalog entry declares, up to its page cap.

use serde_json::{Map, Value};

use super::retry::RetryPolicy;
use super::{Conn, Failure, Outcome, Runtime, StepError, DEFAULT_MAX_PAGES};
use crate::catalog::{ErrorKind, OpRef, PageStyle};
use crate::jsonpath::{self, JsonPath};

impl Runtime {
    pub(super) async fn paginate(
        &self,
        op: &OpRef,
        conn: &Conn,
        mut input: Map<String, Value>,
        policy: &RetryPolicy,
    ) -> Result<Outcome, Failure> {
        let p = op.def().pagination.clone().expect("paginated op");
        let items_path = jsonpath::compile(&p.items).map_err(|e| Failure {
            error: StepError::new(ErrorKind::InvalidInput, e),
            attempts: 0,
        })?;
        let page_size = p
            .limit_input
            .as_ref()
            .and_then(|l| input.get(l).and_then(Value::as_u64))
            .or(p.page_size);
        if let (Some(l), Some(size)) = (&p.limit_input, page_size) {
            input.entry(l.clone()).or_insert(Value::from(size));
        }
        // The catalog checked these paths at load; compile them once per call.
        let cursor_paths: Vec<(String, JsonPath)> = p
            .cursor
            .iter()
            .filter_map(|(name, path)| jsonpath::compile(path).ok().map(|jp| (name.clone(), jp)))
            .collect();
        let mut all = Vec::new();
        let mut attempts = 0;
        let mut offset = p
            .offset_input
            .as_ref()
            .and_then(|o| input.get(o).and_then(Value::as_u64))
            .unwrap_or(0);
        let mut page = p
            .page_input
            .as_ref()
            .and_then(|o| input.get(o).and_then(Value::as_u64))
            .unwrap_or(1);
        for _ in 0..p.max_pages.unwrap_or(DEFAULT_MAX_PAGES) {
            match p.style {
                PageStyle::Offset => {
                    if let Some(o) = &p.offset_input {
                        input.insert(o.clone(), Value::from(offset));
                    }
                }
                PageStyle::Page => {
                    if let Some(pi) = &p.page_input {
                        input.insert(pi.clone(), Value::from(page));
                    }
                }
                PageStyle::Cursor => {}
            }
            let (body, n) = self.with_retries(op, conn, &input, policy).await?;
            attempts += n;
            let items: Vec<Value> = match items_path.first(&body) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            let count = items.len() as u64;
            all.extend(items);
            if count == 0 || page_size.is_some_and(|s| count < s) {
                break;
            }
            match p.style {
                PageStyle::Offset => offset += count,
                PageStyle::Page => page += 1,
                PageStyle::Cursor => {
                    let mut advanced = false;
                    for (name, path) in &cursor_paths {
                        match path.first(&body) {
                            Some(v) if !v.is_null() => {
                                advanced = true;
                                input.insert(name.clone(), v);
                            }
                            _ => {
                                input.remove(name);
                            }
                        }
                    }
                    if !advanced {
                        break;
                    }
                }
            }
        }
        Ok(Outcome {
            output: Value::Array(all),
            attempts,
        })
    }
}
