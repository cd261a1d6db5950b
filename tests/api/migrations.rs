//! Migrations applied to a database that already holds rows: the reference from tasks to
//! users and the case-insensitive usernames keep every row they can.

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::helpers::open_database;

/// The migrations before this issue's.
const BEFORE: u32 = 6;

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute(Statement::from_string(
        db.get_database_backend(),
        sql.to_string(),
    ))
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn strings(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    db.query_all(Statement::from_string(
        db.get_database_backend(),
        sql.to_string(),
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.try_get_by_index::<String>(0).unwrap())
    .collect()
}

async fn seed_and_migrate(db: &DatabaseConnection) {
    Migrator::up(db, Some(BEFORE)).await.unwrap();
    let now = "'2026-11-30T12:00:00Z'";
    for (id, name) in [
        (1, "eve"),
        (2, "EVE"),
        (3, "bob"),
        (4, "a_long_name_of_twenty"),
    ] {
        exec(
            db,
            &format!(
                "INSERT INTO users (id, username, password_hash, role, created_at) \
                 VALUES ({id}, '{name}', 'x', 'user', {now})"
            ),
        )
        .await;
    }
    exec(db, &format!("INSERT INTO users (id, username, password_hash, role, created_at) VALUES (5, 'A_LONG_NAME_OF_TWENTY', 'x', 'user', {now})")).await;
    // Tasks of existing users, and one of a user deleted by hand (an orphan).
    for (id, user_id, status) in [
        (1, 1, "DONE"),
        (2, 2, "QUEUED"),
        (3, 3, "FAILED"),
        (4, 99, "QUEUED"),
    ] {
        exec(
            db,
            &format!(
                "INSERT INTO tasks (id, task_id, user_id, prompt, steps, status, attempts, priority, created_at, updated_at) \
                 VALUES ({id}, 'task-{id}', {user_id}, 'p', 20, '{status}', 0, 'normal', {now}, {now})"
            ),
        )
        .await;
    }
    for (id, user_id) in [(1, 1), (2, 99)] {
        exec(
            db,
            &format!(
                "INSERT INTO images (id, user_id, task_id, content_type, data, created_at) \
                 VALUES ({id}, {user_id}, 'task-{id}', 'image/png', '', {now})"
            ),
        )
        .await;
    }
    Migrator::up(db, None).await.unwrap();
}

async fn assert_rows_kept_and_rules_hold(db: &DatabaseConnection) {
    assert_eq!(
        strings(db, "SELECT task_id FROM tasks ORDER BY id").await,
        ["task-1", "task-2", "task-3"],
        "the orphan goes, every other task stays"
    );
    assert_eq!(strings(db, "SELECT task_id FROM images").await, ["task-1"]);
    assert_eq!(
        strings(db, "SELECT username FROM users ORDER BY id").await,
        [
            "eve",
            "EVE_2",
            "bob",
            "a_long_name_of_twenty",
            "A_LONG_NAME_OF_TWE_5"
        ],
        "the older spelling stays, later twins are renamed within 20 characters"
    );
    // The reference holds: no task for a missing user, and a removed user's tasks go.
    let now = "'2026-11-30T12:00:00Z'";
    let orphan = db
        .execute(Statement::from_string(
            db.get_database_backend(),
            format!(
                "INSERT INTO tasks (task_id, user_id, prompt, steps, status, attempts, priority, created_at, updated_at) \
                 VALUES ('new', 77, 'p', 20, 'QUEUED', 0, 'normal', {now}, {now})"
            ),
        ))
        .await;
    assert!(orphan.is_err(), "a task of a missing user was stored");
    exec(db, "DELETE FROM users WHERE id = 3").await;
    assert_eq!(
        strings(db, "SELECT task_id FROM tasks ORDER BY id").await,
        ["task-1", "task-2"]
    );
    // Names are unique whatever their case.
    let twin = db
        .execute(Statement::from_string(
            db.get_database_backend(),
            format!("INSERT INTO users (username, password_hash, role, created_at) VALUES ('Bob_X', 'x', 'user', {now}), ('BOB_x', 'x', 'user', {now})"),
        ))
        .await;
    assert!(twin.is_err(), "two names differing in case were stored");
    // New tasks still get ids after the old ones, and the indexes are back.
    exec(
        db,
        &format!(
            "INSERT INTO tasks (task_id, user_id, prompt, steps, status, attempts, priority, created_at, updated_at) \
             VALUES ('next', 1, 'p', 20, 'QUEUED', 0, 'normal', {now}, {now})"
        ),
    )
    .await;
    assert_eq!(
        strings(db, "SELECT task_id FROM tasks WHERE id > 4").await,
        ["next"]
    );
}

#[actix_web::test]
async fn on_sqlite_the_migrations_keep_existing_rows_and_add_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let db = open_database(&url).await;
    seed_and_migrate(&db).await;
    assert_rows_kept_and_rules_hold(&db).await;
    let indexes = strings(
        &db,
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' AND sql IS NOT NULL ORDER BY name",
    )
    .await;
    assert_eq!(
        indexes,
        [
            "idx_tasks_created_at",
            "idx_tasks_instance",
            "idx_tasks_queued_vip",
            "idx_tasks_started_at",
            "idx_tasks_status_fair",
            "idx_tasks_status_id",
            "idx_tasks_status_updated",
            "idx_tasks_user_id_id",
            "idx_tasks_user_id_idempotency_key",
            "idx_tasks_user_status"
        ]
    );
    // And back down, and up again.
    Migrator::down(&db, Some(3)).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
}

#[actix_web::test]
async fn on_postgresql_the_migrations_keep_existing_rows_and_add_their_rules() {
    let Some(database) = crate::postgres::TempDatabase::create().await else {
        return;
    };
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    seed_and_migrate(&db).await;
    // Explicit ids were inserted: move the sequence past them, as real rows would have.
    exec(&db, "SELECT setval('tasks_id_seq', 4)").await;
    assert_rows_kept_and_rules_hold(&db).await;
    Migrator::down(&db, Some(3)).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    drop(db);
    database.drop().await;
}
