//! The built-in catalog against the API references in `reference/`.
//!
//! The table below was typed by hand from `reference/ghl-contacts-api.md`
//! (§1 v2 table and §1.1 bodies, §2 v1 table) and
//! `reference/sendpulse-api.md` (§2 email service, §3 CRM), not copied from
//! the catalog files: a connector file that drifts from the API fails here.
//! Required inputs are those the reference marks required (`*`), plus every
//! path parameter; inputs filled from the connection (`locationId`) are left
//! out, since recipes never map them.

use std::collections::BTreeSet;

use patchbay::catalog::{Catalog, OpKind};

/// `(operation id, method, path, required inputs a recipe must map)`.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

#[rustfmt::skip]
const REFERENCE: &[Row] = &[
    // ---------------------------------------------------- HighLevel API v2
    ("ghl.contacts.get", "GET", "/contacts/{contactId}", &["contactId"]),
    ("ghl.contacts.create", "POST", "/contacts/", &[]),
    ("ghl.contacts.update", "PUT", "/contacts/{contactId}", &["contactId"]),
    ("ghl.contacts.delete", "DELETE", "/contacts/{contactId}", &["contactId"]),
    ("ghl.contacts.upsert", "POST", "/contacts/upsert", &[]),
    ("ghl.contacts.lookup", "GET", "/contacts/search/duplicate", &[]),
    ("ghl.contacts.list", "GET", "/contacts/", &[]),
    ("ghl.contacts.search", "POST", "/contacts/search", &["pageLimit"]),
    ("ghl.contacts.by_business", "GET", "/contacts/business/{businessId}", &["businessId"]),
    ("ghl.tasks.list", "GET", "/contacts/{contactId}/tasks", &["contactId"]),
    ("ghl.tasks.create", "POST", "/contacts/{contactId}/tasks", &["contactId", "title", "dueDate", "completed"]),
    ("ghl.tasks.get", "GET", "/contacts/{contactId}/tasks/{taskId}", &["contactId", "taskId"]),
    ("ghl.tasks.update", "PUT", "/contacts/{contactId}/tasks/{taskId}", &["contactId", "taskId"]),
    ("ghl.tasks.complete", "PUT", "/contacts/{contactId}/tasks/{taskId}/completed", &["contactId", "taskId", "completed"]),
    ("ghl.tasks.delete", "DELETE", "/contacts/{contactId}/tasks/{taskId}", &["contactId", "taskId"]),
    ("ghl.notes.list", "GET", "/contacts/{contactId}/notes", &["contactId"]),
    ("ghl.notes.create", "POST", "/contacts/{contactId}/notes", &["contactId", "body"]),
    ("ghl.notes.get", "GET", "/contacts/{contactId}/notes/{id}", &["contactId", "id"]),
    ("ghl.notes.update", "PUT", "/contacts/{contactId}/notes/{id}", &["contactId", "id"]),
    ("ghl.notes.delete", "DELETE", "/contacts/{contactId}/notes/{id}", &["contactId", "id"]),
    ("ghl.appointments.list", "GET", "/contacts/{contactId}/appointments", &["contactId"]),
    ("ghl.tags.add", "POST", "/contacts/{contactId}/tags", &["contactId", "tags"]),
    ("ghl.tags.remove", "DELETE", "/contacts/{contactId}/tags", &["contactId", "tags"]),
    ("ghl.followers.add", "POST", "/contacts/{contactId}/followers", &["contactId", "followers"]),
    ("ghl.followers.remove", "DELETE", "/contacts/{contactId}/followers", &["contactId", "followers"]),
    ("ghl.campaigns.add", "POST", "/contacts/{contactId}/campaigns/{campaignId}", &["contactId", "campaignId"]),
    ("ghl.campaigns.remove", "DELETE", "/contacts/{contactId}/campaigns/{campaignId}", &["contactId", "campaignId"]),
    ("ghl.campaigns.remove_all", "DELETE", "/contacts/{contactId}/campaigns/removeAll", &["contactId"]),
    ("ghl.workflows.add", "POST", "/contacts/{contactId}/workflow/{workflowId}", &["contactId", "workflowId"]),
    ("ghl.workflows.remove", "DELETE", "/contacts/{contactId}/workflow/{workflowId}", &["contactId", "workflowId"]),
    ("ghl.tags.bulk_update", "POST", "/contacts/bulk/tags/update/{type}", &["type", "contacts", "tags"]),
    ("ghl.contacts.bulk_business", "POST", "/contacts/bulk/business", &["ids", "businessId"]),
    // HighLevel OAuth (§3.1): an agency token mints a location token. The
    // form body's `companyId` is the connection's `company_id`; the
    // location is the recipe's (any location of the agency).
    ("ghl.oauth.location_token", "POST", "/oauth/locationToken", &["locationId"]),
    // HighLevel Calendars API (not a contacts endpoint).
    ("ghl.appointments.create", "POST", "/calendars/events/appointments", &["calendarId", "contactId", "startTime"]),
    // ---------------------------------------------- HighLevel API v1 (legacy)
    ("ghl_v1.contacts.list", "GET", "/v1/contacts/", &[]),
    ("ghl_v1.contacts.create", "POST", "/v1/contacts/", &[]),
    ("ghl_v1.contacts.lookup", "GET", "/v1/contacts/lookup", &[]),
    ("ghl_v1.contacts.get", "GET", "/v1/contacts/{id}", &["id"]),
    ("ghl_v1.contacts.update", "PUT", "/v1/contacts/{id}", &["id"]),
    ("ghl_v1.contacts.delete", "DELETE", "/v1/contacts/{id}", &["id"]),
    ("ghl_v1.tasks.list", "GET", "/v1/contacts/{contactId}/tasks/", &["contactId"]),
    ("ghl_v1.tasks.create", "POST", "/v1/contacts/{contactId}/tasks/", &["contactId", "title", "dueDate"]),
    ("ghl_v1.tasks.get", "GET", "/v1/contacts/{contactId}/tasks/{taskId}", &["contactId", "taskId"]),
    ("ghl_v1.tasks.update", "PUT", "/v1/contacts/{contactId}/tasks/{taskId}", &["contactId", "taskId", "title", "dueDate"]),
    ("ghl_v1.tasks.status", "PUT", "/v1/contacts/{contactId}/tasks/{taskId}/status", &["contactId", "taskId", "status"]),
    ("ghl_v1.tasks.delete", "DELETE", "/v1/contacts/{contactId}/tasks/{taskId}", &["contactId", "taskId"]),
    ("ghl_v1.notes.list", "GET", "/v1/contacts/{contactId}/notes/", &["contactId"]),
    ("ghl_v1.notes.create", "POST", "/v1/contacts/{contactId}/notes/", &["contactId", "body"]),
    ("ghl_v1.notes.get", "GET", "/v1/contacts/{contactId}/notes/{noteId}", &["contactId", "noteId"]),
    ("ghl_v1.notes.update", "PUT", "/v1/contacts/{contactId}/notes/{noteId}", &["contactId", "noteId", "body"]),
    ("ghl_v1.notes.delete", "DELETE", "/v1/contacts/{contactId}/notes/{noteId}", &["contactId", "noteId"]),
    ("ghl_v1.appointments.list", "GET", "/v1/contacts/{contactId}/appointments/", &["contactId"]),
    ("ghl_v1.tags.add", "POST", "/v1/contacts/{contactId}/tags/", &["contactId", "tags"]),
    ("ghl_v1.tags.remove", "DELETE", "/v1/contacts/{contactId}/tags/", &["contactId", "tags"]),
    ("ghl_v1.campaigns.add", "POST", "/v1/contacts/{contactId}/campaigns/{campaignId}", &["contactId", "campaignId"]),
    ("ghl_v1.campaigns.remove", "DELETE", "/v1/contacts/{contactId}/campaigns/{campaignId}", &["contactId", "campaignId"]),
    ("ghl_v1.campaigns.remove_all", "DELETE", "/v1/contacts/{contactId}/campaigns/remove-all", &["contactId"]),
    ("ghl_v1.workflows.add", "POST", "/v1/contacts/{contactId}/workflow/{workflowId}", &["contactId", "workflowId"]),
    // ------------------------------------------------ SendPulse email service
    ("sendpulse.user.info", "GET", "/user/info", &[]),
    ("sendpulse.addressbooks.list", "GET", "/addressbooks", &[]),
    ("sendpulse.addressbooks.create", "POST", "/addressbooks", &["bookName"]),
    ("sendpulse.addressbooks.get", "GET", "/addressbooks/{id}", &["id"]),
    ("sendpulse.addressbooks.rename", "PUT", "/addressbooks/{id}", &["id"]),
    ("sendpulse.addressbooks.delete", "DELETE", "/addressbooks/{id}", &["id"]),
    ("sendpulse.addressbooks.variables", "GET", "/addressbooks/{id}/variables", &["id"]),
    ("sendpulse.subscribers.list", "GET", "/addressbooks/{id}/emails", &["id"]),
    ("sendpulse.subscribers.count", "GET", "/addressbooks/{id}/emails/total", &["id"]),
    ("sendpulse.subscribers.add", "POST", "/addressbooks/{id}/emails", &["id", "emails"]),
    ("sendpulse.subscribers.remove", "DELETE", "/addressbooks/{id}/emails", &["id", "emails"]),
    ("sendpulse.subscribers.unsubscribe", "POST", "/addressbooks/{id}/emails/unsubscribe", &["id", "emails"]),
    ("sendpulse.subscribers.update_variables", "POST", "/addressbooks/{id}/emails/variable", &["id", "email", "variables"]),
    ("sendpulse.subscribers.get", "GET", "/addressbooks/{id}/emails/{email}", &["id", "email"]),
    // The reference's table has no body for the phone change; SendPulse's
    // bulk-email spec (a source of the reference) gives `{email*, phone*}`.
    ("sendpulse.subscribers.update_phone", "PUT", "/addressbooks/{id}/phone", &["id", "email", "phone"]),
    ("sendpulse.subscribers.find_by_variable", "GET", "/addressbooks/{id}/variables/{name}/{value}", &["id", "name", "value"]),
    ("sendpulse.emails.books", "GET", "/emails/{email}", &["email"]),
    ("sendpulse.emails.details", "GET", "/emails/{email}/details", &["email"]),
    ("sendpulse.emails.books_many", "POST", "/emails", &["emails"]),
    ("sendpulse.emails.campaigns", "GET", "/emails/{email}/campaigns", &["email"]),
    ("sendpulse.emails.delete", "DELETE", "/emails/{email}", &["email"]),
    // `emails` is the base64 of a comma-separated list on the wire; recipes
    // give a list (`encode: base64_comma_list`).
    ("sendpulse.blacklist.list", "GET", "/blacklist", &[]),
    ("sendpulse.blacklist.add", "POST", "/blacklist", &["emails"]),
    ("sendpulse.blacklist.remove", "DELETE", "/blacklist", &["emails"]),
    ("sendpulse.webhooks.list", "GET", "/v2/email-service/webhook", &[]),
    ("sendpulse.webhooks.get", "GET", "/v2/email-service/webhook/{id}", &["id"]),
    ("sendpulse.webhooks.create", "POST", "/v2/email-service/webhook/", &["url", "actions"]),
    ("sendpulse.webhooks.set_url", "PUT", "/v2/email-service/webhook/{id}", &["id", "url"]),
    ("sendpulse.webhooks.delete", "DELETE", "/v2/email-service/webhook/{id}", &["id"]),
    // ---------------------------------------------------------- SendPulse CRM
    ("sendpulse.crm.users.list", "GET", "/crm/v1/users", &[]),
    ("sendpulse.crm.contacts.list", "POST", "/crm/v1/contacts/get-list", &[]),
    ("sendpulse.crm.contacts.find_by_email", "POST", "/crm/v1/contacts/get-list-by-email", &[]),
    ("sendpulse.crm.contacts.create", "POST", "/crm/v1/contacts/create", &["responsibleId"]),
    ("sendpulse.crm.contacts.get", "GET", "/crm/v1/contacts/{contactId}", &["contactId"]),
    ("sendpulse.crm.contacts.update", "PUT", "/crm/v1/contacts/{contactId}", &["contactId", "responsibleId"]),
    ("sendpulse.crm.contacts.delete", "DELETE", "/crm/v1/contacts/{contactId}", &["contactId"]),
    ("sendpulse.crm.contacts.add_phone", "POST", "/crm/v1/contacts/{contactId}/phones", &["contactId", "phone"]),
    ("sendpulse.crm.contacts.add_emails", "POST", "/crm/v1/contacts/{contactId}/emails", &["contactId"]),
    ("sendpulse.crm.contacts.update_phone", "PUT", "/crm/v1/contacts/{contactId}/phones/{phoneId}", &["contactId", "phoneId", "phone"]),
    ("sendpulse.crm.contacts.delete_phone", "DELETE", "/crm/v1/contacts/{contactId}/phones/{phoneId}", &["contactId", "phoneId"]),
    // The reference gives no bodies for the email and phone edits; they take
    // what the add calls take.
    ("sendpulse.crm.contacts.update_email", "PUT", "/crm/v1/contacts/{contactId}/emails/{emailId}", &["contactId", "emailId", "email"]),
    ("sendpulse.crm.contacts.delete_email", "DELETE", "/crm/v1/contacts/{contactId}/emails/{emailId}", &["contactId", "emailId"]),
    ("sendpulse.crm.contacts.history", "GET", "/crm/v1/contacts/{contactId}/history", &["contactId"]),
    // Messenger bodies are not in the reference; SendPulse's CRM spec (a
    // source of the reference) requires `typeId` and `login` on add and edit.
    ("sendpulse.crm.contacts.add_messenger", "POST", "/crm/v1/contacts/{contactId}/messengers", &["contactId", "typeId", "login"]),
    ("sendpulse.crm.contacts.update_messenger", "PUT", "/crm/v1/contacts/{contactId}/messengers/{messengerId}", &["contactId", "messengerId", "typeId", "login"]),
    ("sendpulse.crm.contacts.delete_messenger", "DELETE", "/crm/v1/contacts/{contactId}/messengers/{messengerId}", &["contactId", "messengerId"]),
    ("sendpulse.crm.contacts.deals", "GET", "/crm/v1/contacts/{contactId}/deals", &["contactId"]),
    ("sendpulse.crm.contacts.find_by_external_id", "GET", "/crm/v1/contacts/external/{externalContactId}", &["externalContactId"]),
    // The reference does not give the definition body; a name is the least
    // an attribute needs. Values are `{attributeId*, value*}`.
    ("sendpulse.crm.attributes.list", "GET", "/crm/v1/contacts/attributes", &[]),
    ("sendpulse.crm.attributes.create", "POST", "/crm/v1/contacts/attributes", &["name"]),
    ("sendpulse.crm.attributes.update", "PUT", "/crm/v1/contacts/attributes/{attributeId}", &["attributeId", "name"]),
    ("sendpulse.crm.attributes.delete", "DELETE", "/crm/v1/contacts/attributes/{attributeId}", &["attributeId"]),
    ("sendpulse.crm.contacts.attributes", "GET", "/crm/v1/contacts/{contactId}/attributes", &["contactId"]),
    ("sendpulse.crm.contacts.set_attribute", "POST", "/crm/v1/contacts/{contactId}/attributes", &["contactId", "attributeId", "value"]),
    ("sendpulse.crm.contacts.set_attributes", "POST", "/crm/v1/contacts/{contactId}/attributes/batch", &["contactId", "attributes"]),
    ("sendpulse.crm.contacts.update_attribute", "PUT", "/crm/v1/contacts/{contactId}/attributes/{attributeId}", &["contactId", "attributeId", "value"]),
    ("sendpulse.crm.contacts.delete_attribute", "DELETE", "/crm/v1/contacts/{contactId}/attributes/{attributeId}", &["contactId", "attributeId"]),
    ("sendpulse.crm.notes.create", "POST", "/crm/v1/contacts/{contactId}/comments", &["contactId", "message"]),
    ("sendpulse.crm.notes.update", "PUT", "/crm/v1/contacts/{contactId}/comments/{commentId}", &["contactId", "commentId", "message"]),
    ("sendpulse.crm.notes.delete", "DELETE", "/crm/v1/contacts/{contactId}/comments/{commentId}", &["contactId", "commentId"]),
    ("sendpulse.crm.tags.list", "GET", "/crm/v1/contact-tags", &[]),
    // The reference does not give the body of tag creation; a name is the
    // least a tag needs.
    ("sendpulse.crm.tags.create", "POST", "/crm/v1/contact-tags", &["name"]),
    ("sendpulse.crm.tags.attach", "POST", "/crm/v1/contact-tags/{tagId}/contact/{contactId}", &["tagId", "contactId"]),
    ("sendpulse.crm.tags.detach", "DELETE", "/crm/v1/contact-tags/{tagId}/contact/{contactId}", &["tagId", "contactId"]),
    ("sendpulse.crm.tags.rename", "PUT", "/crm/v1/contact-tags/{tagId}", &["tagId", "name"]),
    ("sendpulse.crm.tags.delete", "DELETE", "/crm/v1/contact-tags/{tagId}", &["tagId"]),
    ("sendpulse.crm.tasks.list", "POST", "/crm/v1/tasks/list", &[]),
    ("sendpulse.crm.tasks.create", "POST", "/crm/v1/tasks", &[]),
    ("sendpulse.crm.tasks.get", "GET", "/crm/v1/tasks/{taskId}", &["taskId"]),
    ("sendpulse.crm.tasks.update", "PUT", "/crm/v1/tasks/{taskId}", &["taskId"]),
    ("sendpulse.crm.tasks.delete", "DELETE", "/crm/v1/tasks/{taskId}", &["taskId"]),
    ("sendpulse.crm.tasks.comment", "POST", "/crm/v1/tasks/{taskId}/comments", &["taskId"]),
    ("sendpulse.crm.tasks.attach", "POST", "/crm/v1/tasks/{taskId}/entity-attach", &["taskId"]),
    ("sendpulse.crm.tasks.history", "GET", "/crm/v1/tasks/{taskId}/history", &["taskId"]),
    ("sendpulse.crm.tasks.update_comment", "PUT", "/crm/v1/tasks/{taskId}/comments/{commentId}", &["taskId", "commentId", "message"]),
    ("sendpulse.crm.tasks.detach_contact", "DELETE", "/crm/v1/task-contacts/{taskId}/contact/{contactId}", &["taskId", "contactId"]),
    ("sendpulse.crm.boards.list", "GET", "/crm/v1/boards", &[]),
];

/// HighLevel v2 webhook event types (reference §7.1).
const GHL_EVENTS: &[&str] = &[
    "ContactCreate",
    "ContactUpdate",
    "ContactDelete",
    "ContactTagUpdate",
    "ContactDndUpdate",
    "NoteCreate",
    "NoteUpdate",
    "NoteDelete",
    "TaskCreate",
    "TaskComplete",
    "TaskDelete",
    "AppointmentCreate",
    "AppointmentUpdate",
    "AppointmentDelete",
];

/// SendPulse email-service webhook actions (reference §5.1).
const SENDPULSE_EVENTS: &[&str] = &[
    "new_emails",
    "delete",
    "unsubscribe",
    "delivered",
    "open",
    "redirect",
    "spam",
    "hard_bounces",
    "soft_bounces",
    "task_status_update",
];

fn is_http_action(kind: OpKind, native: Option<&str>) -> bool {
    kind == OpKind::Action && native.is_none()
}

#[test]
fn reference_table_has_no_duplicate_ids() {
    let mut seen = BTreeSet::new();
    for (id, ..) in REFERENCE {
        assert!(seen.insert(*id), "{id} is twice in the reference table");
    }
}

#[test]
fn every_catalog_action_matches_the_reference() {
    let cat = Catalog::builtin();
    let mut problems = Vec::new();
    for (id, method, path, required) in REFERENCE {
        let Some(op) = cat.op(id) else {
            problems.push(format!("{id}: not in the catalog"));
            continue;
        };
        let def = op.def();
        if def.kind != OpKind::Action {
            problems.push(format!("{id}: not an action"));
        }
        match def.method {
            Some(m) if m.as_str() == *method => {}
            other => problems.push(format!(
                "{id}: method {:?}, the reference says {method}",
                other.map(|m| m.as_str())
            )),
        }
        if def.path.as_deref() != Some(*path) {
            problems.push(format!(
                "{id}: path {:?}, the reference says {path}",
                def.path
            ));
        }
        let got: BTreeSet<&str> = def
            .inputs
            .iter()
            .filter(|(_, i)| i.required && i.from_connection.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        let want: BTreeSet<&str> = required.iter().copied().collect();
        if got != want {
            problems.push(format!(
                "{id}: required inputs {got:?}, the reference says {want:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "catalog differs from the reference:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_http_action_in_the_catalog_is_in_the_reference_table() {
    let cat = Catalog::builtin();
    let known: BTreeSet<&str> = REFERENCE.iter().map(|r| r.0).collect();
    let mut missing = Vec::new();
    for op in cat.operations() {
        let def = op.def();
        if !is_http_action(def.kind, def.native.as_deref()) {
            continue;
        }
        let id = op.id().to_string();
        if !known.contains(id.as_str()) {
            missing.push(id);
        }
    }
    assert!(
        missing.is_empty(),
        "HTTP actions without a row in the reference table: {missing:?}"
    );
}

#[test]
fn ghl_has_every_v2_contacts_endpoint() {
    let cat = Catalog::builtin();
    let mut contacts_paths = Vec::new();
    for op in cat.operations() {
        let def = op.def();
        if !op.id().starts_with("ghl.") || !is_http_action(def.kind, def.native.as_deref()) {
            continue;
        }
        if def
            .path
            .as_deref()
            .is_some_and(|p| p.starts_with("/contacts"))
        {
            contacts_paths.push(format!("{} {}", op.id(), def.path.as_deref().unwrap_or("")));
        }
    }
    assert_eq!(
        contacts_paths.len(),
        32,
        "the v2 table of the reference has 32 contacts endpoints; the catalog has {contacts_paths:#?}"
    );
}

fn webhook_event_types(cat: &Catalog, prefix: &str) -> (usize, BTreeSet<String>) {
    let mut count = 0;
    let mut types = BTreeSet::new();
    for op in cat.operations() {
        let def = op.def();
        if def.kind != OpKind::Webhook || !op.id().starts_with(prefix) {
            continue;
        }
        count += 1;
        assert!(
            def.method.is_none() && def.path.is_none(),
            "{}: a trigger has no method or path",
            op.id()
        );
        let t = def
            .event_type
            .clone()
            .unwrap_or_else(|| panic!("{}: webhook trigger without event_type", op.id()));
        assert!(
            def.dedupe_key.is_some(),
            "{}: webhook trigger without dedupe_key",
            op.id()
        );
        types.insert(t);
    }
    (count, types)
}

#[test]
fn ghl_webhook_triggers_are_the_documented_events() {
    let cat = Catalog::builtin();
    let (count, types) = webhook_event_types(&cat, "ghl.");
    let want: BTreeSet<String> = GHL_EVENTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(count, 14, "ghl webhook triggers: {types:?}");
    assert_eq!(types, want);
}

#[test]
fn sendpulse_webhook_triggers_are_the_documented_actions() {
    let cat = Catalog::builtin();
    let (count, types) = webhook_event_types(&cat, "sendpulse.");
    let want: BTreeSet<String> = SENDPULSE_EVENTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(count, 10, "sendpulse webhook triggers: {types:?}");
    assert_eq!(types, want);
}
