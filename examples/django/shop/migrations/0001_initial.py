from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.RunSQL(
            "CREATE TABLE migration_runs (migration text NOT NULL);"
            "INSERT INTO migration_runs VALUES ('shop.0001_initial')",
            "DROP TABLE migration_runs",
        ),
        migrations.CreateModel(
            name="Customer",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("email", models.TextField(unique=True)),
            ],
        ),
        migrations.RunSQL(
            "INSERT INTO shop_customer (email) VALUES ('ada@example.com'), ('grace@example.com')",
            migrations.RunSQL.noop,
        ),
    ]
