from django.db import models


class Customer(models.Model):
    email = models.TextField(unique=True)
    display_name = models.TextField()
